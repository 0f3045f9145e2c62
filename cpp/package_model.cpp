// The AOTInductor package of `ecdp-export --aoti`, run through libtorch's package loader.
#include <stdexcept>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "model.h"

namespace ecdp {
namespace {

class PackageModel : public Model {
 public:
  explicit PackageModel(const std::string& path) : loader_(path) {
    auto meta = loader_.get_metadata();
    for (const char* key : {"ecdp.lr_size", "ecdp.batch", "ecdp.scale", "ecdp.device"}) {
      if (!meta.count(key)) throw std::runtime_error(path + ": not an ECDP package (no " + key + " metadata)");
    }
    auto size = meta["ecdp.lr_size"];
    int64_t batch = std::stoll(meta["ecdp.batch"]), scale = std::stoll(meta["ecdp.scale"]);
    int64_t h = std::stoll(size.substr(0, size.find('x'))), w = std::stoll(size.substr(size.find('x') + 1));
    lr_shape_ = {batch, 3, h, w};
    noise_shape_ = {batch, 3, h * scale, w * scale};
    device_ = torch::Device(meta["ecdp.device"]);
  }

  std::vector<int64_t> lr_shape() const override { return lr_shape_; }
  std::vector<int64_t> noise_shape() const override { return noise_shape_; }

  torch::Tensor run(const torch::Tensor& lr, const torch::Tensor& noise) override {
    torch::NoGradGuard no_grad;
    auto outputs = loader_.run({lr.to(device_), noise.to(device_)});
    return outputs.at(0).to(torch::kCPU);
  }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
  std::vector<int64_t> lr_shape_, noise_shape_;
  torch::Device device_ = torch::kCPU;
};

}  // namespace

std::unique_ptr<Model> load_package(const std::string& path) { return std::make_unique<PackageModel>(path); }

}  // namespace ecdp
