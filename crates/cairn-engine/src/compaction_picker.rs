//! The compaction picker: a pure function from the shape of the tree to the next compaction.
//!
//! Levels use dynamic targets: the bottom level (L6) holds most data and sets the scale; each level
//! above targets a `level_multiplier`-th of the one below. The *base level* is the highest level whose
//! target is still at least `level_base_bytes`; L0 compacts straight into it, and the levels between L0
//! and the base level stay empty. A small tree therefore goes L0 → L6 directly, which keeps write
//! amplification low until the data grows.
//!
//! Scores: L0 = files / `l0_compaction_trigger`; a level between base and L5 = bytes / target. The level
//! with the highest score of at least 1 is compacted into the next non-empty-target level.

use crate::config::NUM_LEVELS;

/// The bottom level.
pub const LAST_LEVEL: usize = NUM_LEVELS - 1;

/// What the picker looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeShape {
    /// Bytes per level.
    pub level_bytes: [u64; NUM_LEVELS],
    /// Files per level.
    pub level_files: [usize; NUM_LEVELS],
}

/// The knobs the picker uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickerConfig {
    /// L0 files that trigger a compaction.
    pub l0_compaction_trigger: usize,
    /// Smallest target of the base level.
    pub level_base_bytes: u64,
    /// Growth factor between levels.
    pub level_multiplier: u64,
}

/// The levels' targets and the base level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelTargets {
    /// The level L0 compacts into.
    pub base_level: usize,
    /// Target bytes per level (0 for L0 and levels above the base level).
    pub target_bytes: [u64; NUM_LEVELS],
}

/// A compaction to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Pick {
    /// Level whose files are compacted.
    pub start_level: usize,
    /// Level the output goes to.
    pub output_level: usize,
    /// The score that chose it (>= 1).
    pub score: f64,
}

/// Computes dynamic level targets.
pub fn level_targets(shape: &TreeShape, cfg: &PickerConfig) -> LevelTargets {
    let mut target_bytes = [0u64; NUM_LEVELS];
    let bottom = shape.level_bytes[1..].iter().copied().max().unwrap_or(0);
    let mut base_level = LAST_LEVEL;
    let mut cur = bottom.max(cfg.level_base_bytes);
    target_bytes[LAST_LEVEL] = cur;
    while base_level > 1 && cur / cfg.level_multiplier >= cfg.level_base_bytes {
        cur /= cfg.level_multiplier;
        base_level -= 1;
        target_bytes[base_level] = cur;
    }
    LevelTargets { base_level, target_bytes }
}

/// Picks the next compaction, if any level is over its target.
pub fn pick(shape: &TreeShape, cfg: &PickerConfig) -> Option<Pick> {
    let targets = level_targets(shape, cfg);
    let mut best: Option<Pick> = None;
    let mut consider = |start_level: usize, output_level: usize, score: f64| {
        if score >= 1.0 && best.as_ref().is_none_or(|b| score > b.score) {
            best = Some(Pick { start_level, output_level, score });
        }
    };
    consider(0, targets.base_level, shape.level_files[0] as f64 / cfg.l0_compaction_trigger as f64);
    for level in 1..LAST_LEVEL {
        if shape.level_bytes[level] == 0 {
            continue;
        }
        if level < targets.base_level {
            // Data above the base level (the base moved down as the tree shrank, or a rescale imported
            // files there): drain it downwards, deepest level first, so a level is never moved below a
            // shallower (newer) one.
            consider(level, targets.base_level, f64::MAX / 2.0 + level as f64 * 1e300);
            continue;
        }
        let score = shape.level_bytes[level] as f64 / targets.target_bytes[level].max(1) as f64;
        consider(level, level + 1, score);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn cfg() -> PickerConfig {
        PickerConfig { l0_compaction_trigger: 4, level_base_bytes: 64 * MB, level_multiplier: 10 }
    }

    fn shape(files: [usize; 7], bytes: [u64; 7]) -> TreeShape {
        TreeShape { level_bytes: bytes, level_files: files }
    }

    // Golden cases: each line is a tree shape and the compaction the picker must choose.
    #[test]
    fn golden_picks() {
        let c = cfg();
        // Empty tree: nothing to do.
        assert_eq!(pick(&shape([0; 7], [0; 7]), &c), None);
        // Three L0 files, trigger is four: nothing.
        assert_eq!(pick(&shape([3, 0, 0, 0, 0, 0, 0], [30 * MB, 0, 0, 0, 0, 0, 0]), &c), None);
        // Small tree: L0 compacts straight into L6.
        let p = pick(&shape([4, 0, 0, 0, 0, 0, 0], [40 * MB, 0, 0, 0, 0, 0, 0]), &c).unwrap();
        assert_eq!((p.start_level, p.output_level), (0, 6));
        assert_eq!(p.score, 1.0);
        // 1 GiB at the bottom: base level is L5 (target 102 MiB); L0 goes there.
        let s = shape([5, 0, 0, 0, 0, 0, 2], [50 * MB, 0, 0, 0, 0, 0, 1024 * MB]);
        assert_eq!(level_targets(&s, &c).base_level, 5);
        let p = pick(&s, &c).unwrap();
        assert_eq!((p.start_level, p.output_level), (0, 5));
        // L5 over its target beats a quiet L0.
        let s = shape([1, 0, 0, 0, 0, 20, 40], [10 * MB, 0, 0, 0, 0, 300 * MB, 1024 * MB]);
        let p = pick(&s, &c).unwrap();
        assert_eq!((p.start_level, p.output_level), (5, 6));
        // Data stranded above the base level drains first.
        let s = shape([0, 0, 0, 2, 0, 0, 0], [0, 0, 0, 10 * MB, 0, 0, 0]);
        let p = pick(&s, &c).unwrap();
        assert_eq!((p.start_level, p.output_level), (3, 6));
        // Two levels above the base: the deeper (older) one drains first.
        let s = shape([0, 0, 0, 2, 3, 0, 0], [0, 0, 0, 10 * MB, 10 * MB, 0, 0]);
        let p = pick(&s, &c).unwrap();
        assert_eq!((p.start_level, p.output_level), (4, 6));
        // The bottom level never compacts into itself.
        assert_eq!(pick(&shape([0, 0, 0, 0, 0, 0, 90], [0, 0, 0, 0, 0, 0, 90_000 * MB]), &c), None);
    }

    #[test]
    fn targets_grow_by_the_multiplier() {
        let s = shape([0; 7], [0, 0, 0, 0, 0, 0, 100_000 * MB]);
        let t = level_targets(&s, &cfg());
        assert_eq!(t.base_level, 3);
        assert_eq!(t.target_bytes[6], 100_000 * MB);
        assert_eq!(t.target_bytes[5], 10_000 * MB);
        assert_eq!(t.target_bytes[3], 100 * MB);
    }
}
