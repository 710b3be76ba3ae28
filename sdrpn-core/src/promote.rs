//! Exact float64 comparisons of float32 maps, done in float32.
//!
//! The reference code compares float32 maps against float64 thresholds
//! (`a > 0.2 * max`): numpy promotes to float64. GPU backends rarely have f64,
//! so we move the threshold instead: for an f32 `x` and a real `t`,
//! `x > t` holds exactly when `x > round_down_f32(t)`, `x < t` when
//! `x < round_up_f32(t)`, and `x >= t` when `x >= round_up_f32(t)`.

/// The largest f32 that is `<= t`.
pub fn round_down_f32(t: f64) -> f32 {
    let f = t as f32;
    if f as f64 > t {
        f.next_down()
    } else {
        f
    }
}

/// The smallest f32 that is `>= t`.
pub fn round_up_f32(t: f64) -> f32 {
    let f = t as f32;
    if (f as f64) < t {
        f.next_up()
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_reproduce_float64_promotion() {
        // 0.2f32 is slightly above 0.2: numpy says 0.2f32 > 0.2 * 1.0.
        let t = 0.2 * 1.0f64;
        assert!(0.2f32 > round_down_f32(t));
        assert!((0.2f32 as f64) > t);
        // A value just below 0.1 (as f64) is background; 0.1f32 is above 0.1.
        assert!(0.1f32 >= round_up_f32(0.1));
        assert!(0.1f32.next_down() < round_up_f32(0.1));
        // Exactly representable thresholds stay put.
        assert_eq!(round_down_f32(0.5), 0.5);
        assert_eq!(round_up_f32(0.25), 0.25);
        // A sink is S >= 1e-3 in float64: 1e-3f32 (just above 1e-3) is one.
        assert!(1e-3f32 >= round_up_f32(1e-3));
        assert!(1e-3f32.next_down() < round_up_f32(1e-3));
    }
}
