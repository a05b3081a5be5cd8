//! The Whisper network, written against Hugging Face's weight layout with
//! Candle's building blocks. Candle's bundled Whisper uses the tanh
//! approximation of GELU where OpenAI's and transformers' Whisper use the
//! exact (erf) one; the golden test caught the difference, so the network is
//! here, with the exact activation and a key/value cache for the decoder's
//! self-attention so each new token costs one position.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{
    conv1d, embedding, layer_norm, linear, linear_no_bias, Conv1d, Conv1dConfig, Embedding,
    LayerNorm, Linear, VarBuilder,
};

/// The fields of config.json the network needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NetConfig {
    pub num_mel_bins: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    pub decoder_ffn_dim: usize,
    pub vocab_size: usize,
    pub max_source_positions: usize,
    pub max_target_positions: usize,
}

type Result<T> = candle_core::Result<T>;

#[derive(Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(d: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Attention {
            q: linear(d, d, vb.pp("q_proj"))?,
            k: linear_no_bias(d, d, vb.pp("k_proj"))?,
            v: linear(d, d, vb.pp("v_proj"))?,
            out: linear(d, d, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `[b, t, d]` → `[b, heads, t, d/heads]`.
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(x)?)?,
            self.split(&self.v.forward(x)?)?,
        ))
    }

    /// Attention of `x` over `keys`/`values`, with an additive `mask`.
    fn attend(
        &self,
        x: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let scale = ((d / self.heads) as f64).powf(-0.5);
        let q = self.split(&(self.q.forward(x)? * scale)?)?;
        let mut scores = q.matmul(&keys.t()?)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights
            .matmul(values)?
            .transpose(1, 2)?
            .reshape((b, t, d))?;
        self.out.forward(&out)
    }
}

#[derive(Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(d: usize, ffn: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Mlp {
            fc1: linear(d, ffn, vb.pp("fc1"))?,
            fc2: linear(ffn, d, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)
    }
}

#[derive(Clone)]
struct EncoderLayer {
    attn_ln: LayerNorm,
    attn: Attention,
    mlp_ln: LayerNorm,
    mlp: Mlp,
}

#[derive(Clone)]
struct DecoderLayer {
    attn_ln: LayerNorm,
    attn: Attention,
    cross_ln: LayerNorm,
    cross: Attention,
    mlp_ln: LayerNorm,
    mlp: Mlp,
}

/// Whisper's weights; cheap to clone (tensors are shared).
#[derive(Clone)]
pub struct Net {
    conv1: Conv1d,
    conv2: Conv1d,
    encoder_positions: Tensor,
    encoder: Vec<EncoderLayer>,
    encoder_ln: LayerNorm,
    tokens: Embedding,
    decoder_positions: Tensor,
    decoder: Vec<DecoderLayer>,
    decoder_ln: LayerNorm,
    pub config: NetConfig,
}

const LN_EPS: f64 = 1e-5;

impl Net {
    pub fn load(config: NetConfig, vb: VarBuilder) -> Result<Self> {
        let d = config.d_model;
        let enc = vb.pp("model.encoder");
        let conv = |stride| Conv1dConfig {
            padding: 1,
            stride,
            ..Default::default()
        };
        let encoder = (0..config.encoder_layers)
            .map(|i| {
                let l = enc.pp(format!("layers.{i}"));
                Ok(EncoderLayer {
                    attn_ln: layer_norm(d, LN_EPS, l.pp("self_attn_layer_norm"))?,
                    attn: Attention::load(d, config.encoder_attention_heads, l.pp("self_attn"))?,
                    mlp_ln: layer_norm(d, LN_EPS, l.pp("final_layer_norm"))?,
                    mlp: Mlp::load(d, config.encoder_ffn_dim, &l)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let dec = vb.pp("model.decoder");
        let decoder = (0..config.decoder_layers)
            .map(|i| {
                let l = dec.pp(format!("layers.{i}"));
                Ok(DecoderLayer {
                    attn_ln: layer_norm(d, LN_EPS, l.pp("self_attn_layer_norm"))?,
                    attn: Attention::load(d, config.decoder_attention_heads, l.pp("self_attn"))?,
                    cross_ln: layer_norm(d, LN_EPS, l.pp("encoder_attn_layer_norm"))?,
                    cross: Attention::load(
                        d,
                        config.decoder_attention_heads,
                        l.pp("encoder_attn"),
                    )?,
                    mlp_ln: layer_norm(d, LN_EPS, l.pp("final_layer_norm"))?,
                    mlp: Mlp::load(d, config.decoder_ffn_dim, &l)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Net {
            conv1: conv1d(config.num_mel_bins, d, 3, conv(1), enc.pp("conv1"))?,
            conv2: conv1d(d, d, 3, conv(2), enc.pp("conv2"))?,
            encoder_positions: enc
                .pp("embed_positions")
                .get((config.max_source_positions, d), "weight")?,
            encoder,
            encoder_ln: layer_norm(d, LN_EPS, enc.pp("layer_norm"))?,
            tokens: embedding(config.vocab_size, d, dec.pp("embed_tokens"))?,
            decoder_positions: dec
                .pp("embed_positions")
                .get((config.max_target_positions, d), "weight")?,
            decoder,
            decoder_ln: layer_norm(d, LN_EPS, dec.pp("layer_norm"))?,
            config,
        })
    }

    /// Audio features of one window's `[1, n_mels, frames]` log-mel input.
    pub fn encode(&self, mel: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(mel)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?.transpose(1, 2)?;
        let t = x.dim(1)?;
        let mut x = x.broadcast_add(&self.encoder_positions.narrow(0, 0, t)?)?;
        for layer in &self.encoder {
            let h = layer.attn_ln.forward(&x)?;
            let (k, v) = layer.attn.keys_values(&h)?;
            x = (&x + layer.attn.attend(&h, &k, &v, None)?)?;
            x = (&x + layer.mlp.forward(&layer.mlp_ln.forward(&x)?)?)?;
        }
        self.encoder_ln.forward(&x)
    }

    /// A decoder over `audio` features, with empty caches.
    pub fn decoder(&self, audio: &Tensor) -> Result<Decoder> {
        let cross = self
            .decoder
            .iter()
            .map(|l| l.cross.keys_values(audio))
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            net: self.clone(),
            cross,
            cache: vec![None; self.decoder.len()],
            position: 0,
        })
    }
}

/// Decoding state for one window: cross-attention keys/values of the audio
/// and the self-attention cache of the tokens fed so far.
pub struct Decoder {
    net: Net,
    cross: Vec<(Tensor, Tensor)>,
    cache: Vec<Option<(Tensor, Tensor)>>,
    position: usize,
}

impl Decoder {
    pub fn position(&self) -> usize {
        self.position
    }

    /// Feeds `tokens` and returns the next-token logits after the last.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let device = self.net.decoder_positions.device().clone();
        let n = tokens.len();
        let start = self.position;
        let ids = Tensor::new(tokens, &device)?.unsqueeze(0)?;
        let mut x = self
            .net
            .tokens
            .forward(&ids)?
            .broadcast_add(&self.net.decoder_positions.narrow(0, start, n)?)?;
        let mask = causal_mask(start, n, &device)?;
        for (i, layer) in self.net.decoder.iter().enumerate() {
            let h = layer.attn_ln.forward(&x)?;
            let (k, v) = layer.attn.keys_values(&h)?;
            let (k, v) = match &self.cache[i] {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            x = (&x + layer.attn.attend(&h, &k, &v, mask.as_ref())?)?;
            self.cache[i] = Some((k, v));
            let h = layer.cross_ln.forward(&x)?;
            let (ck, cv) = &self.cross[i];
            x = (&x + layer.cross.attend(&h, ck, cv, None)?)?;
            x = (&x + layer.mlp.forward(&layer.mlp_ln.forward(&x)?)?)?;
        }
        self.position += n;
        let last = self.net.decoder_ln.forward(&x.narrow(1, n - 1, 1)?)?;
        // Output projection tied to the token embedding.
        let logits = last
            .squeeze(0)?
            .matmul(&self.net.tokens.embeddings().t()?)?
            .squeeze(0)?;
        logits.to_dtype(DType::F32)?.to_vec1()
    }
}

/// Additive mask letting new position `start + i` see keys `0..=start + i`.
fn causal_mask(start: usize, n: usize, device: &Device) -> Result<Option<Tensor>> {
    if n == 1 {
        return Ok(None);
    }
    let total = start + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (n, total), device)?
        .unsqueeze(0)?
        .unsqueeze(0)
        .map(Some)
}
