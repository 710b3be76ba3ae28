//! Seeded scenes for the testbed: a large image with a few coloured shapes,
//! each with a short code of digits written in black on it (on the object's
//! own colour, so the patches that hold the code also show whose it is).
//!
//! A scene is geometry first (where each object, label and glyph is, in
//! source pixels) and pixels second ([`Scene::render`]), so the same scene
//! can be drawn with small glyphs (unreadable in the model's global view)
//! and the ground truth is exact.

use super::font::{code_size, draw_code, GLYPHS};
use image::{Rgb, RgbImage};
use sdrpn_core::crop::PixelBox;
use sdrpn_core::rng::SplitMix;
use serde::{Deserialize, Serialize};

/// The colours objects come in (names as the questions say them).
pub const PALETTE: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [50, 80, 225]),
    ("yellow", [235, 210, 40]),
    ("purple", [140, 60, 200]),
    ("cyan", [40, 200, 210]),
    ("orange", [245, 140, 30]),
    ("pink", [245, 130, 190]),
];

/// Object shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// An axis-aligned square.
    Square,
    /// A disc.
    Circle,
    /// An upward triangle (base at the bottom).
    Triangle,
}

impl Shape {
    /// All shapes.
    pub const ALL: [Shape; 3] = [Shape::Square, Shape::Circle, Shape::Triangle];

    /// The word the questions use.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Square => "square",
            Shape::Circle => "circle",
            Shape::Triangle => "triangle",
        }
    }

    /// Whether (`x`, `y`), relative to the top-left of a `side` box, is inside.
    fn contains(self, x: f32, y: f32, side: f32) -> bool {
        let h = side / 2.0;
        match self {
            Shape::Square => (0.0..side).contains(&x) && (0.0..side).contains(&y),
            Shape::Circle => (x - h).powi(2) + (y - h).powi(2) <= h * h,
            Shape::Triangle => (0.0..side).contains(&y) && (x - h).abs() <= h * y / side,
        }
    }

    /// Centre of the label relative to the box: the centre, or for the
    /// triangle a point low enough that a wide label fits.
    fn label_centre(self, side: f32) -> (f32, f32) {
        match self {
            Shape::Triangle => (side / 2.0, side * 0.8),
            _ => (side / 2.0, side / 2.0),
        }
    }
}

/// Whether `inner` lies entirely inside `outer`.
pub fn box_contains(outer: &PixelBox, inner: &PixelBox) -> bool {
    inner.x0 >= outer.x0 && inner.y0 >= outer.y0 && inner.x1 <= outer.x1 && inner.y1 <= outer.y1
}

/// Centre of a box.
pub fn box_centre(b: &PixelBox) -> (f32, f32) {
    ((b.x0 + b.x1) as f32 / 2.0, (b.y0 + b.y1) as f32 / 2.0)
}

/// Whether two boxes come closer than `margin` pixels.
fn boxes_near(a: &PixelBox, b: &PixelBox, margin: u32) -> bool {
    a.x0 < b.x1 + margin && b.x0 < a.x1 + margin && a.y0 < b.y1 + margin && b.y0 < a.y1 + margin
}

/// A square of a side uniform in `sides` (inclusive) placed uniformly with
/// at least `margin` pixels to the border of a `image_side` square.
fn random_square(sides: (u32, u32), image_side: u32, margin: u32, rng: &mut SplitMix) -> PixelBox {
    let side = sides.0 + (rng.next_u64() % (sides.1 - sides.0 + 1) as u64) as u32;
    let span = image_side.saturating_sub(side + 2 * margin);
    let x0 = margin + (rng.next_u64() % (span as u64 + 1)) as u32;
    let y0 = margin + (rng.next_u64() % (span as u64 + 1)) as u32;
    PixelBox {
        x0,
        y0,
        x1: x0 + side,
        y1: y0 + side,
    }
}

/// One object of a scene.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    /// Its shape.
    pub shape: Shape,
    /// Index into [`PALETTE`].
    pub colour: usize,
    /// Its code, digits 0-9 (empty: the object carries no code).
    pub code: Vec<u8>,
    /// Bounding box of the shape.
    pub bbox: PixelBox,
    /// Centre of its label.
    pub label_centre: (f32, f32),
}

impl SceneObject {
    /// The colour's name.
    pub fn colour_name(&self) -> &'static str {
        PALETTE[self.colour].0
    }
    /// The code as text (`"47"`).
    pub fn code_text(&self) -> String {
        self.code.iter().map(|d| char::from(b'0' + d)).collect()
    }
    /// The box of the code (with a margin of one font pixel) when it is
    /// drawn at `glyph_scale`.
    pub fn label_box(&self, glyph_scale: u32) -> PixelBox {
        let (w, h) = code_size(self.code.len(), glyph_scale);
        let pad = glyph_scale;
        let (cx, cy) = self.label_centre;
        let x0 = (cx - (w / 2) as f32).round() as u32 - pad;
        let y0 = (cy - (h / 2) as f32).round() as u32 - pad;
        PixelBox {
            x0,
            y0,
            x1: x0 + w + 2 * pad,
            y1: y0 + h + 2 * pad,
        }
    }
}

/// How scenes are laid out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneConfig {
    /// Side of the (square) source image in pixels.
    pub side: u32,
    /// Fewest objects.
    pub min_objects: usize,
    /// Most objects (at most the palette's 8: colours are unique in a scene).
    pub max_objects: usize,
    /// Smallest object side in pixels.
    pub min_object: u32,
    /// Largest object side in pixels.
    pub max_object: u32,
    /// Digits per code.
    pub code_len: usize,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            side: 672,
            min_objects: 3,
            max_objects: 5,
            min_object: 170,
            max_object: 200,
            code_len: 2,
        }
    }
}

/// A scene: background and objects, in source pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Side of the square image.
    pub side: u32,
    /// Background grey level.
    pub background: u8,
    /// Seed of the background noise.
    pub noise_seed: u64,
    /// The objects (distinct colours).
    pub objects: Vec<SceneObject>,
}

/// Smallest gap between two objects' boxes, and between an object and the border.
const MARGIN: u32 = 10;

impl Scene {
    /// A random scene.
    pub fn generate(config: &SceneConfig, rng: &mut SplitMix) -> Scene {
        let count = config.min_objects
            + (rng.next_u64() % (config.max_objects - config.min_objects + 1) as u64) as usize;
        let mut colours: Vec<usize> = (0..PALETTE.len()).collect();
        rng.shuffle(&mut colours);
        let mut objects: Vec<SceneObject> = Vec::new();
        let mut attempts = 0;
        while objects.len() < count && attempts < 1000 {
            attempts += 1;
            let bbox = random_square(
                (config.min_object, config.max_object),
                config.side,
                MARGIN,
                rng,
            );
            let (side, x0, y0) = (bbox.width(), bbox.x0, bbox.y0);
            if objects.iter().any(|o| boxes_near(&o.bbox, &bbox, MARGIN)) {
                continue;
            }
            let shape = Shape::ALL[(rng.next_u64() % 3) as usize];
            let code = (0..config.code_len)
                .map(|_| (rng.next_u64() % GLYPHS as u64) as u8)
                .collect();
            let (lx, ly) = shape.label_centre(side as f32);
            objects.push(SceneObject {
                shape,
                colour: colours[objects.len()],
                code,
                bbox,
                label_centre: (x0 as f32 + lx, y0 as f32 + ly),
            });
        }
        Scene {
            side: config.side,
            background: 95 + (rng.next_u64() % 60) as u8,
            noise_seed: rng.next_u64(),
            objects,
        }
    }

    /// A glyph sheet for the vision tower's reading practice: a `side`-pixel
    /// square packed with objects of sides in `object_sides` (colours may
    /// repeat, `gap` pixels apart), each with a 2-digit code: many labelled
    /// glyphs per image instead of the few of a scene's zoom.
    pub fn sheet(side: u32, object_sides: (u32, u32), gap: u32, rng: &mut SplitMix) -> Scene {
        let mut objects: Vec<SceneObject> = Vec::new();
        for _ in 0..400 {
            let bbox = random_square(object_sides, side, gap, rng);
            let (o, x0, y0) = (bbox.width(), bbox.x0, bbox.y0);
            if objects.iter().any(|p| boxes_near(&p.bbox, &bbox, gap)) {
                continue;
            }
            let shape = Shape::ALL[(rng.next_u64() % 3) as usize];
            let (lx, ly) = shape.label_centre(o as f32);
            objects.push(SceneObject {
                shape,
                colour: (rng.next_u64() % PALETTE.len() as u64) as usize,
                code: (0..2)
                    .map(|_| (rng.next_u64() % GLYPHS as u64) as u8)
                    .collect(),
                bbox,
                label_centre: (x0 as f32 + lx, y0 as f32 + ly),
            });
        }
        Scene {
            side,
            background: 95 + (rng.next_u64() % 60) as u8,
            noise_seed: rng.next_u64(),
            objects,
        }
    }

    /// Index of the object whose shape covers source point (`x`, `y`).
    pub fn object_at(&self, x: f32, y: f32) -> Option<usize> {
        self.objects.iter().position(|o| {
            let (rx, ry) = (x - o.bbox.x0 as f32, y - o.bbox.y0 as f32);
            o.shape.contains(rx, ry, o.bbox.width() as f32)
        })
    }

    /// Removes the code of every object `i` for which `keep(i)` is false.
    pub fn keep_codes(&mut self, keep: impl Fn(usize) -> bool) {
        for (i, o) in self.objects.iter_mut().enumerate() {
            if !keep(i) {
                o.code.clear();
            }
        }
    }

    /// Draws the scene with every code at `glyph_scale` pixels per font pixel.
    pub fn render(&self, glyph_scale: u32) -> RgbImage {
        let mut noise = SplitMix::new(self.noise_seed);
        let bg = self.background as i32;
        let mut img = RgbImage::from_fn(self.side, self.side, |_, _| {
            let v = (bg + (noise.next_u64() % 17) as i32 - 8).clamp(0, 255) as u8;
            Rgb([v, v, v])
        });
        for o in &self.objects {
            let side = o.bbox.width() as f32;
            let colour = PALETTE[o.colour].1;
            for y in o.bbox.y0..o.bbox.y1 {
                for x in o.bbox.x0..o.bbox.x1 {
                    let (rx, ry) = ((x - o.bbox.x0) as f32 + 0.5, (y - o.bbox.y0) as f32 + 0.5);
                    if o.shape.contains(rx, ry, side) {
                        img.put_pixel(x, y, Rgb(colour));
                    }
                }
            }
            if o.code.is_empty() {
                continue;
            }
            let label = o.label_box(glyph_scale);
            draw_code(
                &mut img,
                &o.code,
                label.x0 + glyph_scale,
                label.y0 + glyph_scale,
                glyph_scale,
                [10, 10, 10],
            );
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_seeded_and_objects_apart() {
        let config = SceneConfig::default();
        let a = Scene::generate(&config, &mut SplitMix::new(7));
        let b = Scene::generate(&config, &mut SplitMix::new(7));
        assert_eq!(a, b);
        for seed in 0..50 {
            let s = Scene::generate(&config, &mut SplitMix::new(seed));
            assert!((3..=5).contains(&s.objects.len()), "seed {seed}");
            let mut colours: Vec<usize> = s.objects.iter().map(|o| o.colour).collect();
            colours.sort();
            colours.dedup();
            assert_eq!(colours.len(), s.objects.len(), "colours are unique");
            for (i, o) in s.objects.iter().enumerate() {
                assert!(o.bbox.x1 + MARGIN <= 672 && o.bbox.y1 + MARGIN <= 672);
                for scale in [3, 8] {
                    let code = o.label_box(scale);
                    assert!(box_contains(&o.bbox, &code), "code inside at scale {scale}");
                    // No label behind the code: its ink must lie on the shape.
                    let side = o.bbox.width() as f32;
                    let (m, x0, y0) = (scale, o.bbox.x0, o.bbox.y0);
                    for (x, y) in [
                        (code.x0 + m, code.y0 + m),
                        (code.x1 - m, code.y0 + m),
                        (code.x0 + m, code.y1 - m),
                        (code.x1 - m, code.y1 - m),
                    ] {
                        let (rx, ry) = ((x - x0) as f32, (y - y0) as f32);
                        assert!(
                            o.shape.contains(rx, ry, side),
                            "seed {seed}: {:?} code corner off the shape at scale {scale}",
                            o.shape
                        );
                    }
                }
                for p in &s.objects[i + 1..] {
                    assert!(
                        !boxes_near(&o.bbox, &p.bbox, MARGIN),
                        "seed {seed}: objects touch"
                    );
                }
            }
        }
    }

    #[test]
    fn rendering_puts_the_label_and_colour_where_the_geometry_says() {
        let s = Scene::generate(&SceneConfig::default(), &mut SplitMix::new(3));
        let img = s.render(2);
        let o = &s.objects[0];
        let label = o.label_box(2);
        // The code's margin shows the object's colour (no white label), the
        // object's colour shows at its box centre-left.
        assert_eq!(img.get_pixel(label.x0, label.y0).0, PALETTE[o.colour].1);
        let inked = (label.y0..label.y1)
            .flat_map(|y| (label.x0..label.x1).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [10, 10, 10])
            .count();
        assert!(inked > 20, "the code is drawn ({inked} ink pixels)");
        let (cx, cy) = box_centre(&o.bbox);
        let probe = img.get_pixel(cx as u32 - 25, cy as u32 + 10);
        assert_eq!(probe.0, PALETTE[o.colour].1, "{:?}", o.shape);
    }
}
