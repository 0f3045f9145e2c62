// Binary PPM (P6, 8-bit RGB) images as float tensors in [0, 1].
#pragma once

#include <string>

#include <torch/torch.h>

namespace ecdp {

// The image of a P6 file as a (1, 3, H, W) float32 tensor in [0, 1]; throws std::runtime_error.
torch::Tensor read_ppm(const std::string& path);

// Quantize a (1, 3, H, W) tensor in [0, 1] (clamp, round) and write it as P6, atomically.
void write_ppm(const std::string& path, const torch::Tensor& image);

}  // namespace ecdp
