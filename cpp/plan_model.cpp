// The TensorRT plan of `ecdp-export --trt` (a serialized engine), with libtorch CUDA tensors as its I/O buffers.
// Compiled only when CMake finds TensorRT and libtorch has CUDA (ECDP_WITH_TENSORRT).
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>

#include <NvInfer.h>
#include <c10/cuda/CUDAStream.h>

#include "model.h"

namespace ecdp {
namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << message << "\n";
  }
};

std::vector<int64_t> shape_of(const nvinfer1::ICudaEngine& engine, const char* name) {
  auto dims = engine.getTensorShape(name);
  if (dims.nbDims < 0) throw std::runtime_error(std::string("the plan has no tensor named ") + name);
  return std::vector<int64_t>(dims.d, dims.d + dims.nbDims);
}

class PlanModel : public Model {
 public:
  explicit PlanModel(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open the file");
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_->deserializeCudaEngine(bytes.data(), bytes.size()));
    if (!engine_) throw std::runtime_error(path + ": not a plan that this TensorRT can run");
    context_.reset(engine_->createExecutionContext());
    lr_shape_ = shape_of(*engine_, "lr");
    noise_shape_ = shape_of(*engine_, "noise");
    sr_shape_ = shape_of(*engine_, "sr");
  }

  std::vector<int64_t> lr_shape() const override { return lr_shape_; }
  std::vector<int64_t> noise_shape() const override { return noise_shape_; }

  torch::Tensor run(const torch::Tensor& lr, const torch::Tensor& noise) override {
    auto cuda = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat32);
    auto lr_gpu = lr.to(cuda).contiguous();
    auto noise_gpu = noise.to(cuda).contiguous();
    auto sr = torch::empty(sr_shape_, cuda);
    context_->setTensorAddress("lr", lr_gpu.data_ptr());
    context_->setTensorAddress("noise", noise_gpu.data_ptr());
    context_->setTensorAddress("sr", sr.data_ptr());
    if (!context_->enqueueV3(c10::cuda::getCurrentCUDAStream().stream())) {
      throw std::runtime_error("TensorRT failed to run the plan");
    }
    return sr.to(torch::kCPU);  // waits for the plan's work: the copy is on the same stream
  }

 private:
  Logger logger_;  // declared first: destroyed after everything that logs to it
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::vector<int64_t> lr_shape_, noise_shape_, sr_shape_;
};

}  // namespace

std::unique_ptr<Model> load_plan(const std::string& path) { return std::make_unique<PlanModel>(path); }

}  // namespace ecdp
