#include "ppm.h"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace ecdp {
namespace {

// The next header token of a PPM stream, skipping whitespace and # comments.
std::string next_token(std::istream& in) {
  std::string token;
  for (int c = in.get(); c != EOF; c = in.get()) {
    if (c == '#') {
      std::string comment;
      std::getline(in, comment);
      c = '\n';
    }
    if (!std::isspace(c)) {
      token.push_back(static_cast<char>(c));
    } else if (!token.empty()) {
      return token;
    }
  }
  return token;
}

int positive(const std::string& token, const std::string& path) {
  try {
    size_t used = 0;
    int value = std::stoi(token, &used);
    if (used == token.size() && value > 0) return value;
  } catch (const std::exception&) {
  }
  throw std::runtime_error(path + ": not a binary PPM (bad header value '" + token + "')");
}

}  // namespace

torch::Tensor read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open the file");
  if (next_token(in) != "P6") throw std::runtime_error(path + ": not a binary PPM (P6) image");
  int width = positive(next_token(in), path);
  int height = positive(next_token(in), path);
  if (positive(next_token(in), path) != 255) throw std::runtime_error(path + ": only 8-bit PPM (maxval 255) is read");
  auto pixels = torch::empty({height, width, 3}, torch::kUInt8);
  in.read(reinterpret_cast<char*>(pixels.data_ptr<uint8_t>()), pixels.numel());
  if (in.gcount() != pixels.numel()) throw std::runtime_error(path + ": the file ends before its pixels do");
  return pixels.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32).div(255).contiguous();
}

void write_ppm(const std::string& path, const torch::Tensor& image) {
  auto pixels = image[0].to(torch::kCPU, torch::kFloat32).clamp(0, 1).mul(255).round().to(torch::kUInt8)
                    .permute({1, 2, 0}).contiguous();
  std::filesystem::path target(path);
  std::filesystem::path temp = target.parent_path() / ("." + target.filename().string() + ".tmp");
  {
    std::ofstream out(temp, std::ios::binary);
    out << "P6\n" << pixels.size(1) << " " << pixels.size(0) << "\n255\n";
    out.write(reinterpret_cast<const char*>(pixels.data_ptr<uint8_t>()), pixels.numel());
    if (!out) {
      std::filesystem::remove(temp);
      throw std::runtime_error(path + ": cannot be written");
    }
  }
  std::filesystem::rename(temp, target);
}

}  // namespace ecdp
