//! Localisation against the ground truth: boxes in source pixels, the
//! token cells a target covers, and how well a map or a crop finds it.

use sdrpn_core::components::TokenBox;
use sdrpn_core::crop::{token_box_to_pixels, PixelBox};
use sdrpn_core::Grid;

/// Intersection over union of two boxes (0 when either is empty).
pub fn iou(a: PixelBox, b: PixelBox) -> f64 {
    let w = a.x1.min(b.x1).saturating_sub(a.x0.max(b.x0)) as f64;
    let h = a.y1.min(b.y1).saturating_sub(a.y0.max(b.y0)) as f64;
    let inter = w * h;
    let area = |r: PixelBox| r.width() as f64 * r.height() as f64;
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// The cells of a square image's token grid whose centres lie inside `target`
/// (source pixels), raster order.
pub fn target_cells(target: PixelBox, grid: Grid, image_side: u32) -> Vec<bool> {
    let cell_w = image_side as f64 / grid.cols as f64;
    let cell_h = image_side as f64 / grid.rows as f64;
    (0..grid.len())
        .map(|i| {
            let x = (i % grid.cols) as f64 * cell_w + cell_w / 2.0;
            let y = (i / grid.cols) as f64 * cell_h + cell_h / 2.0;
            x >= target.x0 as f64
                && x < target.x1 as f64
                && y >= target.y0 as f64
                && y < target.y1 as f64
        })
        .collect()
}

/// The tight token box of the cells where `map > ratio * max(map)`
/// (the pseudo-labels' foreground rule), `None` for an all-zero map.
pub fn foreground_box(map: &[f32], grid: Grid, ratio: f64) -> Option<TokenBox> {
    let max = map.iter().copied().fold(0.0f32, f32::max) as f64;
    if max <= 0.0 {
        return None;
    }
    TokenBox::of_cells(
        map.iter()
            .enumerate()
            .filter(|(_, &v)| v as f64 > ratio * max)
            .map(|(i, _)| i),
        grid,
    )
}

/// A token box in the source pixels of a square `image_side` image.
pub fn token_box_pixels(b: TokenBox, grid: Grid, patch: usize, image_side: u32) -> PixelBox {
    token_box_to_pixels(b, grid, patch, image_side, image_side)
        .ok()
        .flatten()
        .unwrap_or(PixelBox {
            x0: 0,
            y0: 0,
            x1: 0,
            y1: 0,
        })
}

/// IoU with `target` of the foreground box of `map` (0 when it has none).
pub fn map_iou(
    map: &[f32],
    grid: Grid,
    patch: usize,
    image_side: u32,
    ratio: f64,
    target: PixelBox,
) -> f64 {
    foreground_box(map, grid, ratio)
        .map(|b| iou(token_box_pixels(b, grid, patch, image_side), target))
        .unwrap_or(0.0)
}

/// Whether the cell where `map` peaks lies inside `target`'s cells.
pub fn peak_hits(map: &[f32], cells: &[bool]) -> bool {
    map.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .is_some_and(|(i, _)| cells[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x0: u32, y0: u32, x1: u32, y1: u32) -> PixelBox {
        PixelBox { x0, y0, x1, y1 }
    }

    #[test]
    fn iou_of_worked_boxes() {
        assert_eq!(iou(b(0, 0, 10, 10), b(0, 0, 10, 10)), 1.0);
        // 5x10 overlap, union 100 + 100 - 50.
        assert!((iou(b(0, 0, 10, 10), b(5, 0, 15, 10)) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(iou(b(0, 0, 10, 10), b(10, 0, 20, 10)), 0.0);
        assert_eq!(iou(b(0, 0, 0, 0), b(0, 0, 0, 0)), 0.0);
    }

    #[test]
    fn target_cells_take_the_cells_whose_centres_are_inside() {
        // 4x4 grid over 40 px: centres at 5, 15, 25, 35.
        let grid = Grid::new(4, 4).unwrap();
        let cells = target_cells(b(10, 0, 26, 16), grid, 40);
        let on: Vec<usize> = (0..16).filter(|&i| cells[i]).collect();
        assert_eq!(on, vec![1, 2, 5, 6]);
    }

    #[test]
    fn foreground_box_is_strict_and_tight_and_maps_to_pixels() {
        let grid = Grid::new(4, 4).unwrap();
        let mut map = vec![0.0f32; 16];
        map[5] = 1.0;
        map[6] = 0.5;
        map[15] = 0.19; // below 0.2 * max: not foreground
        let fg = foreground_box(&map, grid, 0.2).unwrap();
        assert_eq!((fg.x0, fg.y0, fg.x1, fg.y1), (1, 1, 3, 2));
        assert_eq!(token_box_pixels(fg, grid, 10, 40), b(10, 10, 30, 20));
        assert!((map_iou(&map, grid, 10, 40, 0.2, b(10, 10, 30, 20)) - 1.0).abs() < 1e-12);
        assert!(foreground_box(&[0.0; 16], grid, 0.2).is_none());
        // As in the labels (SPEC 2): f32 0.2 against 0.2 * max in f64 is above.
        map[15] = 0.2;
        assert_eq!(foreground_box(&map, grid, 0.2).unwrap().x1, 4);
        assert!(peak_hits(&map, &target_cells(b(10, 10, 20, 20), grid, 40)));
        assert!(!peak_hits(&map, &target_cells(b(20, 10, 30, 20), grid, 40)));
    }
}
