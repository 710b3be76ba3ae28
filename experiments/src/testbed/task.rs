//! The testbed's questions: families, samples and seeded splits.
//!
//! - `reading`: "What is written on the red circle?" The target is named by
//!   its colour and shape (visible in the global view); its code is drawn
//!   small, a few pixels high once the source is shrunk to the model's
//!   input, and readable only in a crop (like TextVQA / DocVQA).
//! - `control`: the same question with every code drawn large enough to
//!   read in the global view: SD-RPN has nothing to add there.
//!
//! Only the target carries a code unless [`TaskConfig::distractor_codes`]:
//! with a code on every object the question must be bound to the object
//! it names ("red" in the text to the red patches), which the 2.3M-parameter
//! model did not learn within the pretraining budget (TESTBED.md, README of
//! `experiments/testbed`); the question still names the target.

use super::scene::{Scene, SceneConfig};
use image::RgbImage;
use sdrpn_core::crop::PixelBox;
use sdrpn_core::rng::SplitMix;
use serde::{Deserialize, Serialize};

/// A question family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Read the small code of a named object.
    Reading,
    /// Read a code drawn large enough for the global view.
    Control,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 2] = [Family::Reading, Family::Control];

    /// Its name in files and tables.
    pub fn name(self) -> &'static str {
        match self {
            Family::Reading => "reading",
            Family::Control => "control",
        }
    }
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown family {s:?} (reading, control)"))
    }
}

/// Sizes of the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Scene layout (source pixels).
    pub scene: SceneConfig,
    /// Source pixels per font pixel of the small codes (`reading`).
    pub small_glyph: u32,
    /// Source pixels per font pixel of the large codes (`control`).
    pub large_glyph: u32,
    /// Draw a code on every object, not only on the target.
    #[serde(default)]
    pub distractor_codes: bool,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            scene: SceneConfig::default(),
            small_glyph: 3,
            large_glyph: 8,
            distractor_codes: false,
        }
    }
}

impl TaskConfig {
    /// The default task, with a code on every object when
    /// `distractor_codes` (only on the target otherwise).
    pub fn with_distractor_codes(distractor_codes: bool) -> Self {
        Self {
            distractor_codes,
            ..Self::default()
        }
    }

    /// Source pixels per font pixel for `family`.
    pub fn glyph_scale(&self, family: Family) -> u32 {
        match family {
            Family::Reading => self.small_glyph,
            Family::Control => self.large_glyph,
        }
    }
}

/// One question about one scene.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unique id (`test-reading-00012`).
    pub id: String,
    /// Its family.
    pub family: Family,
    /// The scene.
    pub scene: Scene,
    /// Index of the target object.
    pub target: usize,
    /// Source pixels per font pixel of the codes.
    pub glyph_scale: u32,
    /// The question.
    pub question: String,
    /// The answer.
    pub answer: String,
}

impl Sample {
    /// A random sample of `family`.
    pub fn generate(id: String, family: Family, config: &TaskConfig, rng: &mut SplitMix) -> Self {
        let mut scene = Scene::generate(&config.scene, rng);
        let target = (rng.next_u64() % scene.objects.len() as u64) as usize;
        if !config.distractor_codes {
            scene.keep_codes(|i| i == target);
        }
        let object = &scene.objects[target];
        let question = format!(
            "What is written on the {} {}?",
            object.colour_name(),
            object.shape.name()
        );
        let answer = object.code_text();
        Self {
            id,
            family,
            target,
            glyph_scale: config.glyph_scale(family),
            question,
            answer,
            scene,
        }
    }

    /// The image (source resolution).
    pub fn image(&self) -> RgbImage {
        self.scene.render(self.glyph_scale)
    }

    /// The ground-truth box of the target object, in source pixels.
    pub fn target_box(&self) -> PixelBox {
        self.scene.objects[self.target].bbox
    }
}

/// A named split with its own seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The RPN's training data (labelled by the frozen model).
    Train,
    /// Where settings (heads, threshold) are chosen.
    Validation,
    /// Reported numbers only.
    Test,
}

impl Split {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// The split's stream of randomness under a run seed: the three splits
    /// never share scenes.
    fn rng(self, seed: u64) -> SplitMix {
        let salt = match self {
            Split::Train => 0x7261_696E,
            Split::Validation => 0x7661_6C69,
            Split::Test => 0x7465_7374,
        };
        SplitMix::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
    }

    /// `per_family` samples of each family in `families`, interleaved.
    pub fn samples(
        self,
        seed: u64,
        families: &[Family],
        per_family: usize,
        config: &TaskConfig,
    ) -> Vec<Sample> {
        let mut rng = self.rng(seed);
        let mut out = Vec::with_capacity(per_family * families.len());
        for i in 0..per_family {
            for &family in families {
                let id = format!("{}-{}-{i:05}", self.name(), family.name());
                out.push(Sample::generate(id, family, config, &mut rng));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_seeded_and_disjoint() {
        let config = TaskConfig::default();
        let fams = Family::ALL;
        let a = Split::Test.samples(1, &fams, 3, &config);
        assert_eq!(a, Split::Test.samples(1, &fams, 3, &config));
        assert_eq!(a.len(), 6);
        assert_eq!(a[0].id, "test-reading-00000");
        assert_eq!(a[1].id, "test-control-00000");
        let b = Split::Validation.samples(1, &fams, 3, &config);
        let c = Split::Test.samples(2, &fams, 3, &config);
        for s in &a {
            assert!(b.iter().all(|o| o.scene != s.scene));
            assert!(c.iter().all(|o| o.scene != s.scene));
        }
    }

    #[test]
    fn the_question_names_the_target_and_the_answer_is_its_code() {
        let config = TaskConfig::default();
        for s in Split::Train.samples(3, &Family::ALL, 20, &config) {
            let o = &s.scene.objects[s.target];
            assert_eq!(
                s.question,
                format!(
                    "What is written on the {} {}?",
                    o.colour_name(),
                    o.shape.name()
                )
            );
            assert_eq!(s.answer.len(), 2);
            assert_eq!(s.answer, o.code_text());
            // Colours are unique in a scene, so the question has one answer.
            let same = s
                .scene
                .objects
                .iter()
                .filter(|p| p.colour == o.colour)
                .count();
            assert_eq!(same, 1);
            let expected_scale = match s.family {
                Family::Reading => config.small_glyph,
                Family::Control => config.large_glyph,
            };
            assert_eq!(s.glyph_scale, expected_scale);
            // Only the target carries a code.
            for (i, p) in s.scene.objects.iter().enumerate() {
                assert_eq!(p.code.is_empty(), i != s.target);
            }
        }
        let every = TaskConfig {
            distractor_codes: true,
            ..config
        };
        for s in Split::Train.samples(3, &Family::ALL, 5, &every) {
            assert!(s.scene.objects.iter().all(|o| o.code.len() == 2));
        }
    }
}
