//! The RoI map drawn over the source image, with the crop box.

use image::{Rgb, RgbImage};
use sdrpn_core::crop::PixelBox;
use sdrpn_core::Grid;
use sdrpn_llava::preprocess::{shortest_edge_size, ImageMode};

/// How a host's token grid sits on the source image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridPlacement {
    /// LLaVA: the image made square by its image mode (padded, or resized
    /// and centre-cropped), then covered by the grid.
    Square(ImageMode),
    /// The whole image resized onto the grid (Qwen2.5-VL at each image's
    /// own resolution: `smart_resize` keeps all of it).
    Whole,
}

/// Where source pixel `(x, y)` lands on the token grid (fractional token
/// coordinates), under the model's preprocessing; `None` outside the input.
fn to_grid(
    x: f32,
    y: f32,
    w: u32,
    h: u32,
    grid: Grid,
    placement: GridPlacement,
) -> Option<(f32, f32)> {
    let (gw, gh) = (grid.cols as f32, grid.rows as f32);
    match placement {
        GridPlacement::Whole => Some((x / w as f32 * gw, y / h as f32 * gh)),
        GridPlacement::Square(ImageMode::Pad) => {
            let side = w.max(h) as f32;
            let (ox, oy) = (((w.max(h) - w) / 2) as f32, ((w.max(h) - h) / 2) as f32);
            Some(((x + ox) / side * gw, (y + oy) / side * gh))
        }
        GridPlacement::Square(ImageMode::Crop) => {
            let s = 1000u32;
            let (rw, rh) = shortest_edge_size(w, h, s);
            let scale = rw as f32 / w as f32;
            let (left, top) = (((rw - s) / 2) as f32, ((rh - s) / 2) as f32);
            let (u, v) = ((x * scale - left) / s as f32, (y * scale - top) / s as f32);
            ((0.0..1.0).contains(&u) && (0.0..1.0).contains(&v)).then_some((u * gw, v * gh))
        }
    }
}

/// Checks, before any work, that a heatmap can be written to `path`: an
/// image format the name's extension names, not a folder, in an existing
/// folder this process can create files in.
pub fn check_writable(path: &std::path::Path) -> anyhow::Result<()> {
    let name = path.display();
    if path.is_dir() {
        anyhow::bail!("--heatmap {name} is a folder: give a file name such as {name}/roi.png");
    }
    image::ImageFormat::from_path(path).map_err(|_| {
        anyhow::anyhow!("--heatmap {name}: the extension names no image format: use .png")
    })?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !folder.is_dir() {
        anyhow::bail!(
            "--heatmap {name}: the folder {} does not exist",
            folder.display()
        );
    }
    let probe = folder.join(format!(".sdrpn-heatmap-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| {
        anyhow::anyhow!(
            "--heatmap {name}: cannot write in {}: {e}",
            folder.display()
        )
    })?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// Bilinear sample of a row-major grid map at fractional token coordinates.
fn sample(map: &[f32], grid: Grid, gx: f32, gy: f32) -> f32 {
    let (cx, cy) = (
        (gx - 0.5).clamp(0.0, (grid.cols - 1) as f32),
        (gy - 0.5).clamp(0.0, (grid.rows - 1) as f32),
    );
    let (x0, y0) = (cx.floor() as usize, cy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(grid.cols - 1), (y0 + 1).min(grid.rows - 1));
    let (fx, fy) = (cx - x0 as f32, cy - y0 as f32);
    let at = |r: usize, c: usize| map[grid.index(r, c)];
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// The image with `map` (values in [0, 1]) blended in red-to-yellow and
/// the crop rectangle drawn in green.
pub fn render(
    image: &RgbImage,
    map: &[f32],
    grid: Grid,
    placement: GridPlacement,
    crop: Option<PixelBox>,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let mut out = image.clone();
    if map.len() == grid.len() {
        for (x, y, px) in out.enumerate_pixels_mut() {
            let Some((gx, gy)) = to_grid(x as f32 + 0.5, y as f32 + 0.5, w, h, grid, placement)
            else {
                continue;
            };
            let v = sample(map, grid, gx, gy).clamp(0.0, 1.0);
            let alpha = 0.65 * v;
            let heat = [255.0, 255.0 * v, 0.0];
            for (channel, h) in px.0.iter_mut().zip(heat) {
                *channel = (*channel as f32 * (1.0 - alpha) + h * alpha).round() as u8;
            }
        }
    }
    if let Some(b) = crop {
        draw_box(&mut out, b, (w.max(h) / 200).max(2), [0, 220, 0]);
    }
    out
}

/// Draws the outline of `b` (`thick` pixels wide, inside the box), clipped
/// to the image.
pub fn draw_box(img: &mut RgbImage, b: PixelBox, thick: u32, colour: [u8; 3]) {
    let (w, h) = img.dimensions();
    for y in b.y0..b.y1.min(h) {
        for x in b.x0..b.x1.min(w) {
            if x < b.x0 + thick || x + thick >= b.x1 || y < b.y0 + thick || y + thick >= b.y1 {
                img.put_pixel(x, y, Rgb(colour));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_cells_redden_their_pixels_and_the_box_is_green() {
        let grid = Grid::new(2, 2).unwrap();
        let image = RgbImage::from_pixel(40, 40, Rgb([0, 0, 255]));
        let map = [1.0, 0.0, 0.0, 0.0];
        let out = render(
            &image,
            &map,
            grid,
            GridPlacement::Square(ImageMode::Pad),
            Some(PixelBox {
                x0: 20,
                y0: 20,
                x1: 40,
                y1: 40,
            }),
        );
        assert!(out.get_pixel(2, 2)[0] > 150, "top-left is hot");
        assert_eq!(
            out.get_pixel(30, 10),
            &Rgb([0, 0, 255]),
            "top-right is cold"
        );
        assert_eq!(out.get_pixel(20, 30), &Rgb([0, 220, 0]), "box edge");
        assert_eq!(out.get_pixel(30, 30)[2], 255, "box inside untouched");
    }

    #[test]
    fn a_whole_image_grid_follows_the_image_not_a_square() {
        // 2 rows x 4 columns over an 80x20 image: cell (1, 3) is the
        // bottom-right 20x10 corner.
        let grid = Grid::new(2, 4).unwrap();
        let image = RgbImage::from_pixel(80, 20, Rgb([0, 0, 255]));
        let mut map = [0.0; 8];
        map[grid.index(1, 3)] = 1.0;
        let out = render(&image, &map, grid, GridPlacement::Whole, None);
        assert!(out.get_pixel(75, 17)[0] > 150, "bottom-right is hot");
        assert_eq!(out.get_pixel(5, 2), &Rgb([0, 0, 255]), "top-left is cold");
        assert_eq!(out.get_pixel(75, 2), &Rgb([0, 0, 255]), "top-right is cold");
    }
}
