//! diffusers' EulerDiscreteScheduler (SD-Turbo's, and a common choice for
//! SD 1.x/2.x): deterministic, so a step count and initial latents fix the
//! result. Candle ships only the ancestral variant, which adds noise.

/// scheduler/scheduler_config.json.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct EulerConfig {
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_prediction")]
    pub prediction_type: String,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "d_spacing")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub use_karras_sigmas: bool,
}

fn d_beta_start() -> f64 {
    0.00085
}
fn d_beta_end() -> f64 {
    0.012
}
fn d_schedule() -> String {
    "scaled_linear".into()
}
fn d_train() -> usize {
    1000
}
fn d_prediction() -> String {
    "epsilon".into()
}
fn d_spacing() -> String {
    "linspace".into()
}

/// The timesteps and noise levels of one generation.
#[derive(Debug, Clone)]
pub struct EulerSchedule {
    pub timesteps: Vec<f64>,
    /// One more than the timesteps: the last is 0.
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
    v_prediction: bool,
}

impl EulerConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.beta_schedule != "scaled_linear" && self.beta_schedule != "linear" {
            return Err(format!(
                "beta_schedule {:?} is not supported",
                self.beta_schedule
            ));
        }
        if self.prediction_type != "epsilon" && self.prediction_type != "v_prediction" {
            return Err(format!(
                "prediction_type {:?} is not supported",
                self.prediction_type
            ));
        }
        if !["linspace", "leading", "trailing"].contains(&self.timestep_spacing.as_str()) {
            return Err(format!(
                "timestep_spacing {:?} is not supported",
                self.timestep_spacing
            ));
        }
        if self.use_karras_sigmas {
            return Err("Karras sigmas are not supported".into());
        }
        Ok(())
    }

    /// The schedule for `steps` inference steps, as diffusers'
    /// `set_timesteps` computes it (float32 betas and cumulative alphas).
    pub fn schedule(&self, steps: usize) -> EulerSchedule {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = (0..n)
            .map(|i| {
                let f = i as f64 / (n - 1) as f64;
                if self.beta_schedule == "scaled_linear" {
                    let (a, b) = (self.beta_start.sqrt() as f32, self.beta_end.sqrt() as f32);
                    let x = a + (b - a) * f as f32;
                    x * x
                } else {
                    (self.beta_start + (self.beta_end - self.beta_start) * f) as f32
                }
            })
            .collect();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1f32;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        let train_sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|&a| f64::from(((1.0 - a) / a).sqrt()))
            .collect();
        let timesteps: Vec<f64> = match self.timestep_spacing.as_str() {
            "linspace" => (0..steps)
                .map(|i| {
                    if steps > 1 {
                        (n - 1) as f64 * i as f64 / (steps - 1) as f64
                    } else {
                        0.0
                    }
                })
                .rev()
                .collect(),
            "leading" => {
                let ratio = n / steps;
                (0..steps)
                    .map(|i| (i * ratio) as f64 + self.steps_offset as f64)
                    .rev()
                    .collect()
            }
            _ => {
                // trailing: round(arange(n, 0, -n/steps)) - 1
                let ratio = n as f64 / steps as f64;
                (0..steps)
                    .map(|i| (n as f64 - i as f64 * ratio).round() - 1.0)
                    .collect()
            }
        };
        let interp = |t: f64| -> f64 {
            let lo = t.floor().clamp(0.0, (n - 1) as f64) as usize;
            let hi = (lo + 1).min(n - 1);
            let frac = t - lo as f64;
            train_sigmas[lo] * (1.0 - frac) + train_sigmas[hi] * frac
        };
        // diffusers keeps sigmas in float32.
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t) as f32 as f64).collect();
        let max_sigma = sigmas.iter().copied().fold(0.0, f64::max);
        sigmas.push(0.0);
        // diffusers: the largest sigma for linspace/trailing spacing, sqrt(σ²+1) for leading.
        let init_noise_sigma = if matches!(self.timestep_spacing.as_str(), "linspace" | "trailing")
        {
            max_sigma
        } else {
            (max_sigma * max_sigma + 1.0).sqrt()
        };
        EulerSchedule {
            timesteps: timesteps.iter().map(|&t| t as f32 as f64).collect(),
            sigmas,
            init_noise_sigma,
            v_prediction: self.prediction_type == "v_prediction",
        }
    }
}

impl EulerSchedule {
    /// The factor the model input is scaled by at step `i`.
    pub fn input_scale(&self, i: usize) -> f64 {
        let s = self.sigmas[i];
        1.0 / (s * s + 1.0).sqrt()
    }

    /// Coefficients `(a, b)` of one Euler step: `next = a * sample + b * model_output`.
    pub fn step_coefficients(&self, i: usize) -> (f64, f64) {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let dt = next - sigma;
        if self.v_prediction {
            // x0 = c_out * v + c_skip * x, with c_skip = 1/(σ²+1), c_out = -σ/sqrt(σ²+1);
            // derivative = (x - x0) / σ.
            let s2 = sigma * sigma + 1.0;
            let c_skip = 1.0 / s2;
            let c_out = -sigma / s2.sqrt();
            ((1.0 + dt * (1.0 - c_skip) / sigma), -dt * c_out / sigma)
        } else {
            // derivative = model output (the predicted noise).
            (1.0, dt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(spacing: &str) -> EulerConfig {
        serde_json::from_value(serde_json::json!({"timestep_spacing": spacing, "steps_offset": 1}))
            .unwrap()
    }

    #[test]
    fn trailing_timesteps_are_diffusers() {
        // diffusers: EulerDiscreteScheduler(timestep_spacing="trailing").set_timesteps(2) → [999, 499].
        let s = config("trailing").schedule(2);
        assert_eq!(s.timesteps, vec![999.0, 499.0]);
        assert_eq!(s.sigmas.len(), 3);
        assert_eq!(s.sigmas[2], 0.0);
        // sigma at t=999 of the scaled-linear schedule, the initial noise scale.
        assert!((s.sigmas[0] - 14.6146).abs() < 1e-3, "{}", s.sigmas[0]);
        assert_eq!(s.init_noise_sigma, s.sigmas[0]);
        let s = config("leading").schedule(4);
        assert_eq!(s.timesteps, vec![751.0, 501.0, 251.0, 1.0]);
        let s = config("linspace").schedule(3);
        assert_eq!(s.timesteps, vec![999.0, 499.5, 0.0]);
    }
}
