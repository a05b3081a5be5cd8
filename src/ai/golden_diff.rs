//! How far a model's tensors are from the goldens a reference
//! implementation computed (tests only): elementwise absolute differences
//! over the flattened tensors, on the CPU.

use candle_core::{Device, Tensor};

fn abs_diff(a: &Tensor, b: &Tensor) -> Tensor {
    let a = a.to_device(&Device::Cpu).unwrap().flatten_all().unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().flatten_all().unwrap();
    (a - b).unwrap().abs().unwrap()
}

/// The largest absolute difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    abs_diff(a, b).max(0).unwrap().to_scalar().unwrap()
}

/// The mean absolute difference.
pub fn mean_diff(a: &Tensor, b: &Tensor) -> f32 {
    abs_diff(a, b).mean(0).unwrap().to_scalar().unwrap()
}
