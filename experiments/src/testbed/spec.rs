//! Testbed data named in a config or on the command line:
//! `testbed:SPLIT:N[:seed=S][:family=F]`, N questions per family of the
//! split's scenes (seed 1 and both families unless given). `sdrpn experiment`
//! accepts it for `[labels] questions` and for a `textvqa` benchmark.

use super::data::{write_split, SplitFiles};
use super::task::{Family, Split, TaskConfig};
use anyhow::Context;
use std::path::Path;
use std::str::FromStr;

/// A testbed split, as named in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestbedData {
    /// Which split.
    pub split: Split,
    /// Questions per family.
    pub per_family: usize,
    /// Seed of the scenes.
    pub seed: u64,
    /// The families drawn.
    pub families: Vec<Family>,
}

/// The prefix of a testbed data spec.
pub const PREFIX: &str = "testbed:";

impl FromStr for TestbedData {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> anyhow::Result<Self> {
        let usage = || format!("{spec:?}: expected testbed:SPLIT:N[:seed=S][:family=F]");
        let rest = spec.strip_prefix(PREFIX).with_context(usage)?;
        let mut parts = rest.split(':');
        let split = match parts.next() {
            Some("train") => Split::Train,
            Some("validation") => Split::Validation,
            Some("test") => Split::Test,
            other => anyhow::bail!(
                "{}: split {other:?} is not train, validation or test",
                usage()
            ),
        };
        let per_family: usize = parts
            .next()
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .with_context(|| format!("{}: N must be a positive integer", usage()))?;
        let mut data = Self {
            split,
            per_family,
            seed: 1,
            families: Family::ALL.to_vec(),
        };
        for part in parts {
            match part.split_once('=') {
                Some(("seed", s)) => {
                    data.seed = s
                        .parse()
                        .with_context(|| format!("{}: seed {s:?}", usage()))?
                }
                Some(("family", f)) => {
                    let family: Family =
                        f.parse().map_err(|e| anyhow::anyhow!("{}: {e}", usage()))?;
                    data.families = vec![family];
                }
                _ => anyhow::bail!("{}: unknown part {part:?}", usage()),
            }
        }
        Ok(data)
    }
}

impl TestbedData {
    /// Writes the split under `root` (in a folder named after the spec;
    /// reused when present).
    pub fn write(&self, root: &Path) -> anyhow::Result<SplitFiles> {
        let families: Vec<&str> = self.families.iter().map(|f| f.name()).collect();
        let dir = root.join(format!(
            "testbed-{}-{}-seed{}-{}",
            self.split.name(),
            self.per_family,
            self.seed,
            families.join("+")
        ));
        let samples = self.split.samples(
            self.seed,
            &self.families,
            self.per_family,
            &TaskConfig::default(),
        );
        write_split(&dir, &samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults_and_options_and_bad_ones_are_named() {
        let d: TestbedData = "testbed:train:300".parse().unwrap();
        assert_eq!((d.split, d.per_family, d.seed), (Split::Train, 300, 1));
        assert_eq!(d.families, Family::ALL.to_vec());
        let d: TestbedData = "testbed:test:50:seed=7:family=reading".parse().unwrap();
        assert_eq!((d.split, d.per_family, d.seed), (Split::Test, 50, 7));
        assert_eq!(d.families, vec![Family::Reading]);
        for bad in [
            "testbed:dev:3",
            "testbed:train",
            "testbed:train:0",
            "testbed:train:3:colour=red",
            "testbed:train:3:family=maths",
        ] {
            let e = bad.parse::<TestbedData>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
