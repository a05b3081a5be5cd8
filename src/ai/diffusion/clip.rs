//! The CLIP text encoder of Stable Diffusion, on Hugging Face's
//! `CLIPTextModel` weight layout. Written here rather than taken from Candle,
//! whose Stable Diffusion CLIP approximates GELU with tanh (SD 2.x and Turbo
//! use the exact one) and whose general CLIP has only quick-GELU.

use candle_core::{Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

type Result<T> = candle_core::Result<T>;

/// text_encoder/config.json.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_act() -> String {
    "quick_gelu".into()
}

fn default_eps() -> f64 {
    1e-5
}

struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct ClipTextEncoder {
    tokens: Embedding,
    positions: Tensor,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    heads: usize,
    exact_gelu: bool,
}

impl ClipTextEncoder {
    pub fn load(config: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let exact_gelu = match config.hidden_act.as_str() {
            "gelu" => true,
            "quick_gelu" => false,
            other => candle_core::bail!("unsupported CLIP activation {other:?}"),
        };
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        let vb = vb.pp("text_model");
        let emb = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layers.{i}"));
                let a = l.pp("self_attn");
                Ok(Layer {
                    ln1: layer_norm(d, eps, l.pp("layer_norm1"))?,
                    q: linear(d, d, a.pp("q_proj"))?,
                    k: linear(d, d, a.pp("k_proj"))?,
                    v: linear(d, d, a.pp("v_proj"))?,
                    out: linear(d, d, a.pp("out_proj"))?,
                    ln2: layer_norm(d, eps, l.pp("layer_norm2"))?,
                    fc1: linear(d, config.intermediate_size, l.pp("mlp.fc1"))?,
                    fc2: linear(config.intermediate_size, d, l.pp("mlp.fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipTextEncoder {
            tokens: embedding(config.vocab_size, d, emb.pp("token_embedding"))?,
            positions: emb
                .pp("position_embedding")
                .get((config.max_position_embeddings, d), "weight")?,
            layers,
            final_ln: layer_norm(d, eps, vb.pp("final_layer_norm"))?,
            heads: config.num_attention_heads,
            exact_gelu,
        })
    }

    fn activation(&self, x: &Tensor) -> Result<Tensor> {
        if self.exact_gelu {
            x.gelu_erf()
        } else {
            x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
        }
    }

    /// The last hidden state (after the final layer norm) for `ids`, `[1, n, d]`.
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let n = ids.len();
        let ids = Tensor::new(ids, device)?.unsqueeze(0)?;
        let mut x = self
            .tokens
            .forward(&ids)?
            .broadcast_add(&self.positions.narrow(0, 0, n)?)?;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, n, n), device)?;
        let d = x.dim(2)?;
        let head = d / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((1, n, self.heads, head))?
                .transpose(1, 2)?
                .contiguous()
        };
        for l in &self.layers {
            let h = l.ln1.forward(&x)?;
            let q = split((l.q.forward(&h)? * (head as f64).powf(-0.5))?)?;
            let k = split(l.k.forward(&h)?)?;
            let v = split(l.v.forward(&h)?)?;
            let w = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?.broadcast_add(&mask)?)?;
            let a = w.matmul(&v)?.transpose(1, 2)?.reshape((1, n, d))?;
            x = (&x + l.out.forward(&a)?)?;
            let h = l.ln2.forward(&x)?;
            x = (&x + l.fc2.forward(&self.activation(&l.fc1.forward(&h)?)?)?)?;
        }
        self.final_ln.forward(&x)
    }
}
