//! The encoder half of diffusers' AutoencoderKL, for image-to-image: an image
//! in [-1, 1] to the mean and standard deviation of its latent distribution.
//!
//! Candle's `AutoEncoderKL::encode` returns a distribution whose mean and
//! standard deviation are private and whose `sample` draws from the device's
//! unseeded generator, so neither a seed nor diffusers' goldens could be
//! matched through it. This is the same network built from Candle's public
//! blocks with the same weight names (`encoder.*`, `quant_conv.*`), with
//! diffusers' clamp of the log-variance to [-30, 20].

use candle_core::{Module, Result, Tensor};
use candle_nn as nn;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};

pub struct VaeEncoder {
    conv_in: nn::Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
    quant_conv: Option<nn::Conv2d>,
}

impl VaeEncoder {
    /// `vb` is the VAE's root (the folder's `vae/` weights).
    pub fn new(
        vb: nn::VarBuilder,
        block_out_channels: &[usize],
        layers_per_block: usize,
        norm_num_groups: usize,
        latent_channels: usize,
        use_quant_conv: bool,
    ) -> Result<Self> {
        let enc = vb.pp("encoder");
        let padded = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = nn::conv2d(3, block_out_channels[0], 3, padded, enc.pp("conv_in"))?;
        let mut down_blocks = Vec::with_capacity(block_out_channels.len());
        for (i, &out_channels) in block_out_channels.iter().enumerate() {
            let in_channels = block_out_channels[i.saturating_sub(1)];
            let config = DownEncoderBlock2DConfig {
                num_layers: layers_per_block,
                resnet_eps: 1e-6,
                resnet_groups: norm_num_groups,
                add_downsample: i + 1 != block_out_channels.len(),
                // diffusers' Encoder pads its downsamplers asymmetrically
                // itself (padding 0 on the conv).
                downsample_padding: 0,
                ..Default::default()
            };
            down_blocks.push(DownEncoderBlock2D::new(
                enc.pp("down_blocks").pp(i.to_string()),
                in_channels,
                out_channels,
                config,
            )?);
        }
        let last = *block_out_channels.last().expect("at least one VAE block");
        let mid_block = UNetMidBlock2D::new(
            enc.pp("mid_block"),
            last,
            None,
            UNetMidBlock2DConfig {
                resnet_eps: 1e-6,
                output_scale_factor: 1.0,
                attn_num_head_channels: None,
                resnet_groups: Some(norm_num_groups),
                ..Default::default()
            },
        )?;
        let conv_norm_out = nn::group_norm(norm_num_groups, last, 1e-6, enc.pp("conv_norm_out"))?;
        let conv_out = nn::conv2d(last, 2 * latent_channels, 3, padded, enc.pp("conv_out"))?;
        let quant_conv = if use_quant_conv {
            Some(nn::conv2d(
                2 * latent_channels,
                2 * latent_channels,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        Ok(VaeEncoder {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
            quant_conv,
        })
    }

    /// `(mean, std)` of the latent distribution of `image` (`[n, 3, h, w]` in
    /// [-1, 1]), each `[n, latent_channels, h / scale, w / scale]`.
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut xs = image.apply(&self.conv_in)?;
        for block in &self.down_blocks {
            xs = xs.apply(block)?;
        }
        let xs = self
            .mid_block
            .forward(&xs, None)?
            .apply(&self.conv_norm_out)?;
        let mut xs = nn::ops::silu(&xs)?.apply(&self.conv_out)?;
        if let Some(quant_conv) = &self.quant_conv {
            xs = quant_conv.forward(&xs)?;
        }
        let parts = xs.chunk(2, 1)?;
        let logvar = parts[1].clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok((parts[0].clone(), std))
    }
}
