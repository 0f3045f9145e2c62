// ecdp-run: super-resolve one PPM image with an exported ECDP solve.
//
//   ecdp-run MODEL.pt2 in.ppm out.ppm [--seed N | --noise noise.bin]
//   ecdp-run --trt MODEL.plan in.ppm out.ppm [...]   (built with TensorRT only)
//
// The prior noise is torch.randn from a CPU generator seeded with N (default 0), the noise that
// ecdp.Upscaler draws for the same seed when the HR image fits in one 512x512 noise block
// (ecdp.sde.seeded_prior), or raw little-endian float32 values read from a file.
#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "model.h"
#include "ppm.h"

namespace {

const char* kUsage =
    "usage: ecdp-run [--trt] MODEL IN.ppm OUT.ppm [--seed N | --noise FILE]\n"
    "  MODEL: an AOTInductor package (.pt2) from `ecdp-export --aoti`, or with --trt a TensorRT\n"
    "  plan from `ecdp-export --trt`; FILE: raw float32 noise of the model's noise shape.\n";

struct Options {
  bool trt = false;
  std::vector<std::string> paths;  // model, input, output
  uint64_t seed = 0;
  std::string noise_file;
};

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    bool has_value = i + 1 < argc;
    if (arg == "--trt") {
      options.trt = true;
    } else if (arg == "--seed" && has_value) {
      options.seed = std::stoull(argv[++i]);
    } else if (arg == "--noise" && has_value) {
      options.noise_file = argv[++i];
    } else if (arg.rfind("--", 0) == 0) {
      throw std::invalid_argument("unknown or incomplete option " + arg);
    } else {
      options.paths.push_back(arg);
    }
  }
  if (options.paths.size() != 3) throw std::invalid_argument("expected MODEL, IN.ppm and OUT.ppm");
  return options;
}

std::unique_ptr<ecdp::Model> load(const Options& options) {
  const std::string& path = options.paths[0];
  if (!std::filesystem::is_regular_file(path)) throw std::runtime_error(path + ": no such file");
  if (!options.trt) return ecdp::load_package(path);
#ifdef ECDP_WITH_TENSORRT
  return ecdp::load_plan(path);
#else
  throw std::runtime_error("this ecdp-run was built without TensorRT; rebuild where CMake finds TensorRT");
#endif
}

torch::Tensor read_noise(const std::string& path, const std::vector<int64_t>& shape) {
  auto noise = torch::empty(shape, torch::kFloat32);
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path + ": cannot open the file");
  auto bytes = static_cast<int64_t>(noise.nbytes());
  if (in.tellg() != bytes) {
    throw std::runtime_error(path + ": expected " + std::to_string(bytes) + " bytes of float32 noise for shape " +
                             c10::str(c10::IntArrayRef(shape)) + ", found " + std::to_string(in.tellg()));
  }
  in.seekg(0);
  in.read(reinterpret_cast<char*>(noise.data_ptr<float>()), bytes);
  return noise;
}

torch::Tensor make_noise(const Options& options, const std::vector<int64_t>& shape) {
  if (!options.noise_file.empty()) return read_noise(options.noise_file, shape);
  return torch::randn(shape, at::detail::createCPUGenerator(options.seed));
}

void run(const Options& options) {
  auto model = load(options);
  auto lr = ecdp::read_ppm(options.paths[1]);
  auto expected = model->lr_shape();
  if (lr.sizes() != c10::IntArrayRef(expected)) {
    throw std::runtime_error(options.paths[1] + " gives an LR batch of shape " + c10::str(lr.sizes()) + ", but " +
                             options.paths[0] + " was exported for " + c10::str(c10::IntArrayRef(expected)) +
                             " (re-export with --lr-size HxW --batch 1)");
  }
  auto sr = model->run(lr, make_noise(options, model->noise_shape()));
  ecdp::write_ppm(options.paths[2], sr);
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    options = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "ecdp-run: error: " << e.what() << "\n" << kUsage;
    return 2;
  }
  try {
    run(options);
  } catch (const c10::Error& e) {
    std::cerr << "ecdp-run: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "ecdp-run: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
