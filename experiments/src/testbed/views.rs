//! What the model sees of a sample while it is pretrained: the global view
//! (the whole source image, as `sdrpn eval` preprocesses it) and zoomed
//! views (a rectangle of the source resized to the model's input, as
//! SD-RPN's second pass crops), with per-patch targets for the vision
//! tower's auxiliary heads.

use super::font::{GLYPH_GAP, GLYPH_H, GLYPH_W};
use super::scene::{Scene, SceneObject};
use image::RgbImage;
use sdrpn_core::crop::PixelBox;
use sdrpn_core::rng::SplitMix;
use sdrpn_llava::preprocess::{clip_preprocess, crop_and_resize, preprocess, ImageMode};

/// Per-patch target meaning "no code here" / "no object here" / "ignore".
pub const NO_CODE: i64 = 10;
/// Colour class of the background.
pub const NO_OBJECT: i64 = super::scene::PALETTE.len() as i64;
/// Shape class of the background.
pub const NO_SHAPE: i64 = super::scene::Shape::ALL.len() as i64;
/// Target skipped by the loss.
pub const IGNORE: i64 = -1;

/// Font pixels must cover at least this many model pixels for a view's codes
/// to count as readable (and get per-patch digit targets).
pub const READABLE_PIXELS_PER_FONT_PIXEL: f32 = 0.9;

/// A patch holding at least this share of a glyph's box learns its digit.
pub const GLYPH_SHARE: f32 = 0.25;

/// The per-patch targets of a view, in [`View::targets`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The first digit at the patches holding that glyph.
    GlyphFirst,
    /// The second digit at the patches holding that glyph.
    GlyphSecond,
    /// The colour of the object under the patch centre.
    Colour,
    /// The first digit of the code of the object under the patch centre.
    ObjectFirst,
    /// The second digit of the code of the object under the patch centre.
    ObjectSecond,
    /// The shape of the object under the patch centre.
    Shape,
    /// Whether the object under the patch centre carries a code (1) or
    /// not (0, also the background), at every scale: where the text is,
    /// even where it cannot be read.
    Coded,
}

impl Target {
    /// All, in [`View::targets`] order.
    pub const ALL: [Target; 7] = [
        Target::GlyphFirst,
        Target::GlyphSecond,
        Target::Colour,
        Target::ObjectFirst,
        Target::ObjectSecond,
        Target::Shape,
        Target::Coded,
    ];
    /// Classes of its head.
    pub fn classes(self) -> usize {
        match self {
            Target::Colour => NO_OBJECT as usize + 1,
            Target::Shape => NO_SHAPE as usize + 1,
            Target::Coded => 2,
            _ => NO_CODE as usize + 1,
        }
    }
}

/// One view of a scene: a source rectangle and its model input.
pub struct View {
    /// The source rectangle shown (the whole image for the global view).
    pub region: PixelBox,
    /// Preprocessed pixels `[3, S, S]`.
    pub pixels: Vec<f32>,
    /// Per-patch targets, each `[P]`, see [`Target`].
    pub targets: [Vec<i64>; 7],
}

/// The global view: the whole image as `eval` and `label` preprocess it.
pub fn global_view(
    scene: &Scene,
    image: &RgbImage,
    glyph_scale: u32,
    side: u32,
    patch: u32,
) -> View {
    let region = PixelBox {
        x0: 0,
        y0: 0,
        x1: image.width(),
        y1: image.height(),
    };
    let pixels = preprocess(image, ImageMode::Pad, side);
    View {
        targets: patch_targets(scene, region, glyph_scale, side, patch),
        region,
        pixels,
    }
}

/// A zoomed view of `region`, prepared exactly as the second pass prepares
/// its crop.
pub fn zoom_view(
    scene: &Scene,
    image: &RgbImage,
    region: PixelBox,
    glyph_scale: u32,
    side: u32,
    patch: u32,
) -> View {
    let crop =
        crop_and_resize(image, region, side, side).expect("zoom regions lie inside the image");
    View {
        pixels: clip_preprocess(&crop, side),
        targets: patch_targets(scene, region, glyph_scale, side, patch),
        region,
    }
}

/// A random rectangle containing `target`, each side uniform in
/// `[min_side, max_side]` (at least the target's side plus a margin),
/// clamped to the image.
pub fn zoom_around(
    target: PixelBox,
    image_side: u32,
    min_side: u32,
    max_side: u32,
    rng: &mut SplitMix,
) -> PixelBox {
    let mut pick =
        |lo: u32, hi: u32| lo + (rng.next_u64() % (hi.saturating_sub(lo) as u64 + 1)) as u32;
    let w = pick(
        min_side.max(target.width() + 8),
        max_side.max(target.width() + 8),
    )
    .min(image_side);
    let h = pick(
        min_side.max(target.height() + 8),
        max_side.max(target.height() + 8),
    )
    .min(image_side);
    let x_lo = target.x1.saturating_sub(w);
    let x_hi = target.x0.min(image_side - w);
    let y_lo = target.y1.saturating_sub(h);
    let y_hi = target.y0.min(image_side - h);
    let x0 = pick(x_lo.min(x_hi), x_hi);
    let y0 = pick(y_lo.min(y_hi), y_hi);
    PixelBox {
        x0,
        y0,
        x1: x0 + w,
        y1: y0 + h,
    }
}

/// Centre of glyph `k` of `object`'s code drawn at `glyph_scale` (source
/// pixels), as [`Scene::render`] draws it.
pub fn glyph_centre(object: &SceneObject, k: usize, glyph_scale: u32) -> (f32, f32) {
    let label = object.label_box(glyph_scale);
    let left = label.x0 + glyph_scale + k as u32 * (GLYPH_W + GLYPH_GAP) * glyph_scale;
    (
        left as f32 + (GLYPH_W * glyph_scale) as f32 / 2.0,
        label.y0 as f32 + glyph_scale as f32 + (GLYPH_H * glyph_scale) as f32 / 2.0,
    )
}

/// Per-patch targets of `region` shown at `side` pixels ([`Target`]): each
/// glyph's digit at every patch holding at least [`GLYPH_SHARE`] of it
/// (slivers ignored; reading), and for every patch the
/// colour and the code of the object under it (digits only when the view
/// makes codes readable; [`NO_CODE`] where there is no glyph or object,
/// [`IGNORE`] everywhere when codes are unreadable). Every patch of an
/// object learns the object's code, so the vision tower carries it from
/// the label over the object: a question that finds the object by its
/// colour finds its code on the same tokens.
fn patch_targets(
    scene: &Scene,
    region: PixelBox,
    glyph_scale: u32,
    side: u32,
    patch: u32,
) -> [Vec<i64>; 7] {
    let g = (side / patch) as usize;
    let (sx, sy) = (
        side as f32 / region.width() as f32,
        side as f32 / region.height() as f32,
    );
    let readable = glyph_scale as f32 * sx.min(sy) >= READABLE_PIXELS_PER_FONT_PIXEL;
    let fill = if readable { NO_CODE } else { IGNORE };
    let mut first = vec![fill; g * g];
    let mut second = vec![fill; g * g];
    let centre = |i: usize| {
        let (col, row) = ((i % g) as f32 + 0.5, (i / g) as f32 + 0.5);
        (
            region.x0 as f32 + col * patch as f32 / sx,
            region.y0 as f32 + row * patch as f32 / sy,
        )
    };
    let (mut object_first, mut object_second) = (first.clone(), second.clone());
    if readable {
        let (half_w, half_h) = (
            (GLYPH_W * glyph_scale) as f32 / 2.0,
            (GLYPH_H * glyph_scale) as f32 / 2.0,
        );
        for o in &scene.objects {
            for (k, &digit) in o.code.iter().enumerate().take(2) {
                // The glyph's box in model pixels.
                let (gx, gy) = glyph_centre(o, k, glyph_scale);
                let gx0 = (gx - half_w - region.x0 as f32) * sx;
                let gx1 = (gx + half_w - region.x0 as f32) * sx;
                let gy0 = (gy - half_h - region.y0 as f32) * sy;
                let gy1 = (gy + half_h - region.y0 as f32) * sy;
                let area = (gx1 - gx0) * (gy1 - gy0);
                let slot = if k == 0 { &mut first } else { &mut second };
                for (i, t) in slot.iter_mut().enumerate() {
                    let (px, py) = ((i % g) as f32 * patch as f32, (i / g) as f32 * patch as f32);
                    let w = (gx1.min(px + patch as f32) - gx0.max(px)).max(0.0);
                    let h = (gy1.min(py + patch as f32) - gy0.max(py)).max(0.0);
                    if w * h >= GLYPH_SHARE * area {
                        *t = digit as i64;
                    } else if w * h > 0.0 && *t == NO_CODE {
                        *t = IGNORE;
                    }
                }
            }
        }
        for i in 0..g * g {
            let (x, y) = centre(i);
            if let Some(o) = scene.object_at(x, y) {
                let code = &scene.objects[o].code;
                let digit = |k: usize| code.get(k).map_or(NO_CODE, |&d| d as i64);
                object_first[i] = digit(0);
                object_second[i] = digit(1);
            }
        }
    }
    let under = |i: usize| {
        let (x, y) = centre(i);
        scene.object_at(x, y).map(|o| &scene.objects[o])
    };
    let colour = (0..g * g)
        .map(|i| under(i).map_or(NO_OBJECT, |o| o.colour as i64))
        .collect();
    let shape = (0..g * g)
        .map(|i| under(i).map_or(NO_SHAPE, |o| o.shape as i64))
        .collect();
    let coded = (0..g * g)
        .map(|i| under(i).map_or(0, |o| i64::from(!o.code.is_empty())))
        .collect();
    [
        first,
        second,
        colour,
        object_first,
        object_second,
        shape,
        coded,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::scene::{box_contains, SceneConfig};

    #[test]
    fn zoom_regions_hold_the_target_and_fit_the_image() {
        let mut rng = SplitMix::new(1);
        for _ in 0..200 {
            let scene = Scene::generate(&SceneConfig::default(), &mut rng);
            let t = scene.objects[0].bbox;
            let z = zoom_around(t, 672, 150, 340, &mut rng);
            assert!(box_contains(&z, &t), "{z:?} holds {t:?}");
            assert!(z.x1 <= 672 && z.y1 <= 672);
            assert!((150..=340).contains(&z.width()) || z.width() == t.width() + 8);
        }
    }

    #[test]
    fn targets_mark_the_label_patch_only_where_codes_are_readable() {
        let scene = Scene::generate(&SceneConfig::default(), &mut SplitMix::new(4));
        let o = &scene.objects[0];
        let image = scene.render(2);
        // Global view of small codes: 0.5 model pixels per font pixel.
        let global = global_view(&scene, &image, 2, 168, 14);
        assert!(global.targets[0].iter().all(|&t| t == IGNORE));
        // A zoom of the object's side and a margin (178-208 source pixels):
        // 1.6-1.9 model pixels per font pixel.
        let region = zoom_around(o.bbox, 672, 168, 168, &mut SplitMix::new(9));
        let zoom = zoom_view(&scene, &image, region, 2, 168, 14);
        let (sx, sy) = (
            168.0 / region.width() as f32,
            168.0 / region.height() as f32,
        );
        let patch_of = |k: usize| {
            let (x, y) = glyph_centre(o, k, 2);
            (((y - region.y0 as f32) * sy) as usize / 14) * 12
                + ((x - region.x0 as f32) * sx) as usize / 14
        };
        assert_eq!(zoom.targets[0][patch_of(0)], o.code[0] as i64);
        assert_eq!(zoom.targets[1][patch_of(1)], o.code[1] as i64);
        assert_eq!(
            zoom.targets[2][patch_of(0)],
            o.colour as i64,
            "the label sits on its object"
        );
        // Object-level codes: every patch whose centre is on the object.
        for i in 0..144 {
            let (x, y) = (
                region.x0 as f32 + ((i % 12) as f32 + 0.5) * 14.0 * region.width() as f32 / 168.0,
                region.y0 as f32 + ((i / 12) as f32 + 0.5) * 14.0 * region.height() as f32 / 168.0,
            );
            let want = match scene.object_at(x, y) {
                Some(k) => scene.objects[k].code[1] as i64,
                None => NO_CODE,
            };
            assert_eq!(zoom.targets[4][i], want, "patch {i}");
        }
        assert!(
            zoom.targets[3]
                .iter()
                .filter(|&&t| t == o.code[0] as i64)
                .count()
                >= 4
        );
        assert!(global.targets[3].iter().all(|&t| t == IGNORE));
        // The glyph centre is inked: the middle column of a digit is drawn
        // in its middle row for most digits, so check the glyph's box.
        let (x, y) = glyph_centre(o, 1, 2);
        let dark = (-7i32..=7)
            .flat_map(|dy| (-5i32..=5).map(move |dx| (dx, dy)))
            .filter(|(dx, dy)| {
                let p = image.get_pixel((x as i32 + dx) as u32, (y as i32 + dy) as u32);
                p[0] < 60 && p[1] < 60 && p[2] < 60
            })
            .count();
        assert!(dark >= 6, "glyph ink around its centre: {dark}");
        let marked = zoom.targets[0].iter().filter(|&&t| t != NO_CODE).count();
        assert!(marked >= 1);
        assert_eq!(zoom.pixels.len(), 3 * 168 * 168);
        // Colour targets: the global view sees every object somewhere.
        for p in &scene.objects {
            assert!(global.targets[2].contains(&(p.colour as i64)));
        }
    }

    #[test]
    fn coded_targets_mark_the_objects_with_a_code_at_every_scale() {
        let mut scene = Scene::generate(&SceneConfig::default(), &mut SplitMix::new(4));
        scene.keep_codes(|i| i == 1);
        let image = scene.render(3);
        let global = global_view(&scene, &image, 3, 168, 14);
        let coded = &global.targets[6];
        for (i, &t) in coded.iter().enumerate() {
            let (x, y) = (
                ((i % 12) as f32 + 0.5) * 672.0 / 12.0,
                ((i / 12) as f32 + 0.5) * 672.0 / 12.0,
            );
            assert_eq!(t, i64::from(scene.object_at(x, y) == Some(1)), "patch {i}");
        }
        assert!(coded.iter().filter(|&&t| t == 1).count() >= 4);
        // Readable zoom: the code-less objects have no object code.
        let region = zoom_around(scene.objects[0].bbox, 672, 168, 168, &mut SplitMix::new(2));
        let zoom = zoom_view(&scene, &image, region, 3, 168, 14);
        for i in 0..144 {
            if zoom.targets[2][i] == scene.objects[0].colour as i64 {
                assert_eq!(zoom.targets[3][i], NO_CODE, "patch {i}");
                assert_eq!(zoom.targets[6][i], 0, "patch {i}");
            }
        }
        // No ink on the code-less objects: only object 1's label is drawn.
        let o = &scene.objects[0];
        let label = o.label_box(3);
        let dark = (label.y0..label.y1)
            .flat_map(|y| (label.x0..label.x1).map(move |x| (x, y)))
            .filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|&c| c < 30))
            .count();
        assert_eq!(dark, 0);
    }

    #[test]
    fn glyph_targets_sit_on_ink_in_the_model_input() {
        // Alignment in model space: every patch told "this glyph is here"
        // shows dark ink in the preprocessed pixels the ViT gets.
        let mut rng = SplitMix::new(11);
        let mut checked = 0;
        for _ in 0..20 {
            let scene = Scene::generate(&SceneConfig::default(), &mut rng);
            let image = scene.render(3);
            let region = zoom_around(scene.objects[0].bbox, 672, 120, 240, &mut rng);
            let view = zoom_view(&scene, &image, region, 3, 168, 14);
            let plane = 168 * 168;
            for (i, &t) in view.targets[0].iter().enumerate() {
                if t == NO_CODE || t == IGNORE {
                    continue;
                }
                let (px, py) = ((i % 12) * 14, (i / 12) * 14);
                let dark = (py..py + 14)
                    .flat_map(|y| (px..px + 14).map(move |x| y * 168 + x))
                    .filter(|&j| (0..3).all(|c| view.pixels[c * plane + j] < -1.3))
                    .count();
                assert!(dark >= 3, "patch {i} of {region:?}: {dark} dark pixels");
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked} glyph patches checked");
    }
}
