//! Greedy token choice, shared by every host's generation loop and by
//! batched generation.

use crate::error::{CoreError, Result};

/// Index of the first maximum (what torch.argmax returns on CPU).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// The greedy token of generated token `step`'s logits, or an error when
/// they are not finite (the weights or the input hold NaN or infinity).
pub fn checked_argmax(logits: &[f32], step: usize) -> Result<u32> {
    match logits.iter().filter(|v| !v.is_finite()).count() {
        0 => Ok(argmax(logits) as u32),
        bad => Err(CoreError::config(
            "model output",
            format!(
                "the logits of generated token {} hold {bad} NaN or infinite values of {}: the weights or the input are not finite",
                step + 1,
                logits.len()
            ),
        )),
    }
}

/// Refuses a token limit of 0, or one that takes a prompt of `prompt_len`
/// tokens past the model's `context`.
pub fn check_answer_budget(prompt_len: usize, max_new_tokens: usize, context: usize) -> Result<()> {
    if max_new_tokens == 0 {
        return Err(CoreError::config("max_new_tokens", "must be at least 1"));
    }
    if prompt_len + max_new_tokens > context {
        return Err(CoreError::config(
            "max_new_tokens",
            format!(
                "the prompt ({prompt_len} tokens) plus {max_new_tokens} new tokens exceed the model's context of {context} positions; lower --max-new-tokens"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_logits_stop_generation_naming_the_token() {
        assert_eq!(checked_argmax(&[0.5, 2.0, -1.0], 0).unwrap(), 1);
        let e = checked_argmax(&[0.5, f32::NAN, f32::INFINITY], 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("generated token 3") && e.contains("2 NaN or infinite values of 3"),
            "{e}"
        );
    }

    #[test]
    fn answer_budgets_past_the_context_are_refused() {
        assert!(check_answer_budget(10, 5, 15).is_ok());
        let e = check_answer_budget(10, 6, 15).unwrap_err().to_string();
        assert!(
            e.contains("prompt (10 tokens) plus 6 new tokens") && e.contains("15"),
            "{e}"
        );
        assert!(check_answer_budget(1, 0, 15).is_err());
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }
}
