//! One value of a history series ([`Sample`], 16 bits) and the quantile of a histogram's
//! counts: what the dashboard's histories (`history.rs`, `frames.rs`) are made of.

/// Samples kept per thing: 15 minutes at the history's interval (2 s).
pub const SAMPLES: usize = 450;

/// One value of a series, as a 16-bit float (bfloat16: an `f32`'s sign, exponent and top
/// 7 mantissa bits, rounded to nearest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sample(u16);

impl Sample {
    pub const MISSING: Sample = Sample(0x7fc0);

    pub fn new(value: f64) -> Sample {
        let v = value as f32;
        if v.is_nan() {
            return Sample::MISSING;
        }
        let bits = v.to_bits();
        // Round to nearest, ties to even; an overflow rounds to infinity, as it should.
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
        Sample((rounded >> 16) as u16)
    }

    /// The value (NaN when missing).
    pub fn get(self) -> f64 {
        f64::from(f32::from_bits(u32::from(self.0) << 16))
    }
}

/// The `q` quantile (in the bounds' unit) of a histogram's per-bucket counts (the last one
/// past the last bound), interpolated linearly in its bucket; NaN for an empty one. One in
/// the last bucket is taken as the last bound.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied().unwrap_or(f64::NAN);
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let into = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
            return lower + (upper - lower) * into;
        }
        below += c;
    }
    bounds.last().copied().unwrap_or(f64::NAN)
}
