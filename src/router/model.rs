//! The complexity model file (`conf/router/complexity-v2.json`, written by
//! `scripts/router/train.py`): loaded and validated into an immutable [`RouterModel`].

use super::features::{DENSE_COUNT, DENSE_NAMES, FEATURE_VERSION};
use super::Mode;
use serde::Deserialize;
use std::path::Path;

/// Why a model file was refused. Each variant names what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read router model {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("router model {path}: not a model file: {reason}")]
    Parse { path: String, reason: String },
    #[error("router model {path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: &'static str,
        reason: String,
    },
}

/// The file as written by the training script (loose; validated by [`RouterModel::from_json`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    format: String,
    version: String,
    feature_version: u32,
    features: SpecFile,
    dense_names: Vec<String>,
    bias: f64,
    dense_mean: Vec<f64>,
    dense_scale: Vec<f64>,
    dense_weights: Vec<f64>,
    word_weights: Vec<f64>,
    char_weights: Vec<f64>,
    quantiles: Vec<f64>,
    modes: ModesFile,
    /// Provenance (data, seed, settings); kept as-is for audit.
    #[serde(default)]
    training: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    word_dim: usize,
    char_dim: usize,
    char_n: usize,
    max_text_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModesFile {
    cheap: f64,
    balanced: f64,
    quality: f64,
}

/// Parameters of the feature extraction carried by the model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSpec {
    /// Buckets of the hashed word uni/bigrams.
    pub word_dim: usize,
    /// Buckets of the hashed character n-grams.
    pub char_dim: usize,
    /// n of the character n-grams.
    pub char_n: usize,
    /// At most this many bytes of the last user turn are scanned (head and tail halves).
    pub max_text_bytes: usize,
}

/// A loaded, validated complexity model. Immutable: share it as `Arc<RouterModel>` (or inside
/// an `ArcSwap` to hot-reload it); scoring takes `&self` and never fails.
#[derive(Debug)]
pub struct RouterModel {
    pub version: String,
    pub spec: FeatureSpec,
    pub(crate) bias: f64,
    dense_mean: [f64; DENSE_COUNT],
    dense_scale: [f64; DENSE_COUNT],
    dense_weights: [f64; DENSE_COUNT],
    word_weights: Vec<f32>,
    char_weights: Vec<f32>,
    /// Score quantiles at 0%, 1%, ..., 100% of the reference distribution.
    quantiles: [f64; 101],
    /// Target strong shares of the three modes.
    shares: [f64; 3],
    pub training: serde_json::Value,
}

const MAX_DIM: usize = 1 << 22;

impl RouterModel {
    pub fn load(path: &Path) -> Result<RouterModel, ModelError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Read {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        RouterModel::from_json(&text, &p)
    }

    /// Parse and validate a model file's text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<RouterModel, ModelError> {
        let f: ModelFile = serde_json::from_str(text).map_err(|e| ModelError::Parse {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        let bad = |field: &'static str, reason: String| ModelError::Invalid {
            path: origin.to_string(),
            field,
            reason,
        };
        // Destructured without `..`: a new field fails to compile until it is validated here.
        let ModelFile {
            format,
            version,
            feature_version,
            features,
            dense_names,
            bias,
            dense_mean,
            dense_scale,
            dense_weights,
            word_weights,
            char_weights,
            quantiles,
            modes,
            training,
        } = f;
        if format != "tollgate-router-complexity" {
            return Err(bad(
                "format",
                format!("expected `tollgate-router-complexity`, found `{format}`"),
            ));
        }
        if feature_version != FEATURE_VERSION {
            return Err(bad(
                "feature_version",
                format!("this build implements feature version {FEATURE_VERSION}, the file needs {feature_version}"),
            ));
        }
        let SpecFile {
            word_dim,
            char_dim,
            char_n,
            max_text_bytes,
        } = features;
        for (field, dim) in [
            ("features.word_dim", word_dim),
            ("features.char_dim", char_dim),
        ] {
            if dim == 0 || dim > MAX_DIM {
                return Err(bad(field, format!("must be in 1..={MAX_DIM}, found {dim}")));
            }
        }
        if !(1..=8).contains(&char_n) {
            return Err(bad(
                "features.char_n",
                format!("must be in 1..=8, found {char_n}"),
            ));
        }
        if !(16..=1 << 20).contains(&max_text_bytes) {
            return Err(bad(
                "features.max_text_bytes",
                format!("must be in 16..=1048576, found {max_text_bytes}"),
            ));
        }
        if dense_names.len() != DENSE_COUNT
            || dense_names
                .iter()
                .zip(DENSE_NAMES.iter())
                .any(|(a, b)| a != b)
        {
            return Err(bad(
                "dense_names",
                format!("must be exactly {DENSE_NAMES:?} (feature spec v{FEATURE_VERSION})"),
            ));
        }
        let dense = |field: &'static str, v: Vec<f64>| -> Result<[f64; DENSE_COUNT], ModelError> {
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(field, "contains a non-finite number".into()));
            }
            <[f64; DENSE_COUNT]>::try_from(v.as_slice()).map_err(|_| {
                bad(
                    field,
                    format!("must have {DENSE_COUNT} entries, found {}", v.len()),
                )
            })
        };
        let dense_mean = dense("dense_mean", dense_mean)?;
        let dense_scale = dense("dense_scale", dense_scale)?;
        let dense_weights = dense("dense_weights", dense_weights)?;
        if dense_scale.iter().any(|s| *s <= 0.0) {
            return Err(bad("dense_scale", "entries must be positive".into()));
        }
        if !bias.is_finite() {
            return Err(bad("bias", "must be finite".into()));
        }
        let weights = |field: &'static str, v: Vec<f64>, dim: usize| {
            if v.len() != dim {
                return Err(bad(
                    field,
                    format!(
                        "must have {dim} entries (the feature dimension), found {}",
                        v.len()
                    ),
                ));
            }
            let w: Vec<f32> = v.iter().map(|x| *x as f32).collect();
            if w.iter().any(|x| !x.is_finite()) {
                return Err(bad(field, "contains a non-finite number".into()));
            }
            Ok(w)
        };
        let word_weights = weights("word_weights", word_weights, word_dim)?;
        let char_weights = weights("char_weights", char_weights, char_dim)?;
        let quantiles = <[f64; 101]>::try_from(quantiles.as_slice()).map_err(|_| {
            bad(
                "quantiles",
                format!(
                    "must have 101 entries (0%..100%), found {}",
                    quantiles.len()
                ),
            )
        })?;
        if quantiles.iter().any(|q| !(0.0..=1.0).contains(q))
            || quantiles.windows(2).any(|w| w[0] > w[1])
        {
            return Err(bad(
                "quantiles",
                "must be non-decreasing scores in [0, 1]".into(),
            ));
        }
        let ModesFile {
            cheap,
            balanced,
            quality,
        } = modes;
        let shares = [cheap, balanced, quality];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) {
            return Err(bad("modes", "strong shares must be in [0, 1]".into()));
        }
        Ok(RouterModel {
            version,
            spec: FeatureSpec {
                word_dim,
                char_dim,
                char_n,
                max_text_bytes,
            },
            bias,
            dense_mean,
            dense_scale,
            dense_weights,
            word_weights,
            char_weights,
            quantiles,
            shares,
            training,
        })
    }

    #[inline]
    pub(crate) fn word_weight(&self, i: usize) -> f32 {
        self.word_weights.get(i).copied().unwrap_or(0.0)
    }

    #[inline]
    pub(crate) fn char_weight(&self, i: usize) -> f32 {
        self.char_weights.get(i).copied().unwrap_or(0.0)
    }

    #[inline]
    pub(crate) fn dense_term(&self, k: usize, v: f64) -> f64 {
        match (
            self.dense_weights.get(k),
            self.dense_mean.get(k),
            self.dense_scale.get(k),
        ) {
            (Some(w), Some(m), Some(s)) => w * (v - m) / s,
            _ => 0.0,
        }
    }

    /// Target share of strong-tier calls of a mode, as shipped with the model.
    pub fn strong_share(&self, mode: Mode) -> f64 {
        match mode {
            Mode::Cheap => self.shares[0],
            Mode::Balanced => self.shares[1],
            Mode::Quality => self.shares[2],
        }
    }

    /// The score above which a request goes to the strong tier so that `share` of the
    /// reference distribution does: its `1 - share` quantile (linear between percentiles).
    pub fn threshold_for_share(&self, share: f64) -> f64 {
        let p = (1.0 - share.clamp(0.0, 1.0)) * 100.0;
        let lo = (p.floor() as usize).min(100);
        let hi = (lo + 1).min(100);
        let frac = p - lo as f64;
        let (a, b) = (self.quantiles[lo], self.quantiles[hi]);
        a + (b - a) * frac
    }

    pub fn threshold(&self, mode: Mode) -> f64 {
        self.threshold_for_share(self.strong_share(mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn shipped() -> RouterModel {
        RouterModel::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/router/complexity-v2.json"
        )))
        .unwrap()
    }

    #[test]
    fn the_shipped_model_loads_and_its_thresholds_are_ordered() {
        let m = shipped();
        assert_eq!(m.version, "complexity-v2");
        let (c, b, q) = (
            m.threshold(Mode::Cheap),
            m.threshold(Mode::Balanced),
            m.threshold(Mode::Quality),
        );
        assert!(c > b && b > q, "{c} {b} {q}");
        assert_eq!(m.threshold_for_share(1.0), m.quantiles[0]);
        assert_eq!(m.threshold_for_share(0.0), m.quantiles[100]);
    }

    #[test]
    fn bad_files_are_refused_with_the_field_named() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/router/complexity-v2.json"
        ))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["feature_version"] = 9.into()),
                "feature_version",
            ),
            (Box::new(|v| v["format"] = "x".into()), "format"),
            (
                Box::new(|v| {
                    v["word_weights"].as_array_mut().unwrap().pop();
                }),
                "word_weights",
            ),
            (
                Box::new(|v| v["dense_names"][0] = "other".into()),
                "dense_names",
            ),
            (Box::new(|v| v["quantiles"][3] = 2.0.into()), "quantiles"),
            (
                Box::new(|v| v["dense_scale"][1] = 0.0.into()),
                "dense_scale",
            ),
            (Box::new(|v| v["features"]["char_n"] = 0.into()), "char_n"),
            (Box::new(|v| v["extra"] = 1.into()), "unknown field"),
        ];
        for (edit, want) in cases {
            let mut bad = v.clone();
            edit(&mut bad);
            let err = RouterModel::from_json(&bad.to_string(), "m.json").unwrap_err();
            assert!(err.to_string().contains(want), "want {want}: {err}");
        }
        let err = RouterModel::load(Path::new("/nonexistent/model.json")).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
