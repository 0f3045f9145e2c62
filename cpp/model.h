// An exported ECDP solve, (lr, noise) -> sr with static shapes: an AOTInductor package or a TensorRT engine.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace ecdp {

class Model {
 public:
  virtual ~Model() = default;
  // (B, 3, h, w) of the LR input and (B, 3, s h, s w) of the noise the model was exported for.
  virtual std::vector<int64_t> lr_shape() const = 0;
  virtual std::vector<int64_t> noise_shape() const = 0;
  // sr (B, 3, s h, s w) in [0, 1] on the CPU, from CPU float32 lr and noise.
  virtual torch::Tensor run(const torch::Tensor& lr, const torch::Tensor& noise) = 0;
};

// An AOTInductor package written by `ecdp-export --aoti`.
std::unique_ptr<Model> load_package(const std::string& path);

#ifdef ECDP_WITH_TENSORRT
// A TensorRT plan (serialized engine) written by `ecdp-export --trt`.
std::unique_ptr<Model> load_plan(const std::string& path);
#endif

}  // namespace ecdp
