//! Which (layer, head) pairs an attention map is averaged over.
//!
//! Written as text in configs and on the command line: layers separated by
//! `;`, each `layer:heads` with heads a comma list (ranges `a-b` inclusive
//! allowed) or `all`. Layers and heads are 0-based.
//! Examples: `"14:24,13,26"` (LLaVA-1.5-7B grounding), `"2:all"` (its sink
//! layer), `"16:2,21,30;15:2;13:21,23,26"` (13B grounding).

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The heads chosen within one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heads {
    /// Every head of the layer.
    All,
    /// These heads, in the order given.
    List(Vec<usize>),
}

/// One layer and its chosen heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerHeads {
    /// 0-based decoder layer.
    pub layer: usize,
    /// Heads of that layer.
    pub heads: Heads,
}

/// A set of (layer, head) pairs; see the module docs for the text form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeadSelection {
    layers: Vec<LayerHeads>,
}

/// A selection checked against a model: every layer with explicit head indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedHeads {
    /// `(layer, heads)` pairs in the order of the selection.
    pub layers: Vec<(usize, Vec<usize>)>,
}

impl ResolvedHeads {
    /// Total number of (layer, head) pairs.
    pub fn pair_count(&self) -> usize {
        self.layers.iter().map(|(_, h)| h.len()).sum()
    }

    /// The layers, in selection order.
    pub fn layer_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.iter().map(|(l, _)| *l)
    }
}

impl HeadSelection {
    /// A selection of the given layers.
    pub fn new(layers: Vec<LayerHeads>) -> Result<Self> {
        let spec = Self { layers }.to_string();
        if spec.is_empty() {
            return Err(err(&spec, "no layer given"));
        }
        // Re-parse so that every constructor enforces the same rules.
        spec.parse()
    }

    /// The layers of the selection, in the order given.
    pub fn layers(&self) -> &[LayerHeads] {
        &self.layers
    }

    /// Expands `all` and checks every index against a model with
    /// `num_layers` layers of `num_heads` heads.
    pub fn resolve(&self, num_layers: usize, num_heads: usize) -> Result<ResolvedHeads> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for lh in &self.layers {
            if lh.layer >= num_layers {
                return Err(CoreError::OutOfRange {
                    what: "layer".into(),
                    index: lh.layer,
                    limit: num_layers,
                });
            }
            let heads = match &lh.heads {
                Heads::All => (0..num_heads).collect(),
                Heads::List(list) => {
                    if let Some(&h) = list.iter().find(|&&h| h >= num_heads) {
                        return Err(CoreError::OutOfRange {
                            what: format!("head (of layer {})", lh.layer),
                            index: h,
                            limit: num_heads,
                        });
                    }
                    list.clone()
                }
            };
            layers.push((lh.layer, heads));
        }
        Ok(ResolvedHeads { layers })
    }
}

fn err(spec: &str, reason: impl Into<String>) -> CoreError {
    CoreError::HeadSelection {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

fn parse_index(spec: &str, text: &str, what: &str) -> Result<usize> {
    text.trim().parse::<usize>().map_err(|_| {
        err(
            spec,
            format!("{what} {:?} is not a non-negative integer", text.trim()),
        )
    })
}

impl FromStr for HeadSelection {
    type Err = CoreError;

    fn from_str(spec: &str) -> Result<Self> {
        let mut layers: Vec<LayerHeads> = Vec::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (layer, heads) = part
                .split_once(':')
                .ok_or_else(|| err(spec, format!("{part:?} lacks ':' (expected layer:heads)")))?;
            let layer = parse_index(spec, layer, "layer")?;
            if layers.iter().any(|l| l.layer == layer) {
                return Err(err(spec, format!("layer {layer} is listed twice")));
            }
            let heads = if heads.trim().eq_ignore_ascii_case("all") {
                Heads::All
            } else {
                let mut list = Vec::new();
                for item in heads.split(',') {
                    let range = match item.split_once('-') {
                        Some((a, b)) => {
                            let (a, b) =
                                (parse_index(spec, a, "head")?, parse_index(spec, b, "head")?);
                            if a > b {
                                return Err(err(spec, format!("head range {a}-{b} is reversed")));
                            }
                            a..=b
                        }
                        None => {
                            let h = parse_index(spec, item, "head")?;
                            h..=h
                        }
                    };
                    for h in range {
                        if list.contains(&h) {
                            return Err(err(
                                spec,
                                format!("head {h} of layer {layer} is listed twice"),
                            ));
                        }
                        list.push(h);
                    }
                }
                Heads::List(list)
            };
            layers.push(LayerHeads { layer, heads });
        }
        if layers.is_empty() {
            return Err(err(spec, "no layer given"));
        }
        Ok(Self { layers })
    }
}

impl fmt::Display for HeadSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, lh) in self.layers.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{}:", lh.layer)?;
            match &lh.heads {
                Heads::All => f.write_str("all")?,
                Heads::List(list) => {
                    let items: Vec<String> = list.iter().map(usize::to_string).collect();
                    f.write_str(&items.join(","))?;
                }
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for HeadSelection {
    type Error = CoreError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<HeadSelection> for String {
    fn from(h: HeadSelection) -> String {
        h.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_paper_selections() {
        let g: HeadSelection = "14:24,13,26".parse().unwrap();
        assert_eq!(g.layers()[0].heads, Heads::List(vec![24, 13, 26]));
        let s: HeadSelection = "2:all".parse().unwrap();
        assert_eq!(s.resolve(32, 32).unwrap().pair_count(), 32);
        let m: HeadSelection = "16:2,21,30;15:2;13:21,23,26".parse().unwrap();
        let r = m.resolve(40, 40).unwrap();
        assert_eq!(r.pair_count(), 7);
        assert_eq!(r.layer_indices().collect::<Vec<_>>(), vec![16, 15, 13]);
        assert_eq!(m.to_string(), "16:2,21,30;15:2;13:21,23,26");
    }

    #[test]
    fn ranges_expand_inclusively() {
        let g: HeadSelection = "1:0-2,5".parse().unwrap();
        assert_eq!(g.layers()[0].heads, Heads::List(vec![0, 1, 2, 5]));
    }

    #[test]
    fn rejects_bad_text_with_a_reason() {
        for bad in ["", "14", "x:1", "1:a", "1:3-1", "1:1,1", "1:1;1:2"] {
            let e = bad.parse::<HeadSelection>().unwrap_err();
            assert!(
                matches!(e, CoreError::HeadSelection { .. }),
                "{bad:?} -> {e}"
            );
        }
    }

    #[test]
    fn resolve_checks_ranges_against_the_model() {
        let g: HeadSelection = "3:0".parse().unwrap();
        assert!(matches!(
            g.resolve(3, 4),
            Err(CoreError::OutOfRange {
                index: 3,
                limit: 3,
                ..
            })
        ));
        let g: HeadSelection = "1:4".parse().unwrap();
        assert!(matches!(
            g.resolve(3, 4),
            Err(CoreError::OutOfRange {
                index: 4,
                limit: 4,
                ..
            })
        ));
    }
}
