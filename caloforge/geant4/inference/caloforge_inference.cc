// The LibTorch side of caloforge's Geant4 fast-simulation model (see caloforge_inference.h).
// New string ABI (LibTorch's); include no Geant4 header here.
#include "caloforge_inference.h"

#include <ATen/Parallel.h>
#include <torch/script.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>

struct cf_model {
  torch::jit::Module module;
  std::map<std::string, std::string> meta;
  long nVoxels = 0, noiseDim = 0, nConditions = 0;
};

namespace {

void SetError(char* err, size_t size, const std::string& message) {
  if (!err || !size) return;
  std::string line = message.substr(0, message.find('\n'));
  std::strncpy(err, line.c_str(), size - 1);
  err[size - 1] = '\0';
}

long Count(const std::map<std::string, std::string>& meta, const char* key) {
  auto it = meta.find(key);
  if (it == meta.end()) throw std::runtime_error(std::string("its metadata lacks ") + key);
  char* end = nullptr;
  const long v = std::strtol(it->second.c_str(), &end, 10);
  if (*end || v < 0) throw std::runtime_error(std::string("bad ") + key + " '" + it->second + "' in its metadata");
  return v;
}

}  // namespace

extern "C" cf_model* cf_open(const char* path, char* err, size_t err_size) {
  auto* m = new cf_model();
  try {
    torch::jit::ExtraFilesMap extra{{"caloforge.txt", ""}};
    try {
      m->module = torch::jit::load(path, torch::kCPU, extra);
    } catch (const std::exception& exc) {
      std::string what = exc.what();
      throw std::runtime_error("not a TorchScript model file (" + what.substr(0, what.find_first_of("\n")) + ")");
    }
    if (extra["caloforge.txt"].empty())
      throw std::runtime_error("a TorchScript file, but not a caloforge export (no caloforge.txt)");
    std::istringstream in(extra["caloforge.txt"]);
    for (std::string line; std::getline(in, line);) {
      const auto space = line.find(' ');
      m->meta[line.substr(0, space)] = space == std::string::npos ? "" : line.substr(space + 1);
    }
    m->nVoxels = Count(m->meta, "n_voxels");
    m->noiseDim = Count(m->meta, "noise_dim");
    std::istringstream names(m->meta["condition_names"]);
    for (std::string s; names >> s;) ++m->nConditions;
    m->module.eval();
    const char* threads = std::getenv("CALOFORGE_FAST_THREADS");
    at::set_num_threads(threads && std::atoi(threads) > 0 ? std::atoi(threads) : 1);
  } catch (const std::exception& exc) {
    SetError(err, err_size, std::string(path) + ": " + exc.what());
    delete m;
    return nullptr;
  }
  return m;
}

extern "C" const char* cf_meta(const cf_model* m, const char* key) {
  auto it = m->meta.find(key);
  return it == m->meta.end() ? nullptr : it->second.c_str();
}

extern "C" long cf_n_voxels(const cf_model* m) { return m->nVoxels; }
extern "C" long cf_noise_dim(const cf_model* m) { return m->noiseDim; }
extern "C" long cf_n_conditions(const cf_model* m) { return m->nConditions; }

extern "C" int cf_generate(cf_model* m, long n, const float* noise, const float* conditions, float* out, char* err,
                           size_t err_size) {
  try {
    torch::NoGradGuard no_grad;
    // from_blob: no copy of the inputs; the network does not write into them
    auto z = torch::from_blob(const_cast<float*>(noise), {n, m->noiseDim}, torch::kFloat32);
    auto c = torch::from_blob(const_cast<float*>(conditions), {n, m->nConditions}, torch::kFloat32);
    auto y = m->module.forward({z, c}).toTensor().to(torch::kFloat32).contiguous();
    if (y.dim() != 2 || y.size(0) != n || y.size(1) != m->nVoxels)
      throw std::runtime_error("the model returned a tensor of the wrong shape");
    std::memcpy(out, y.data_ptr<float>(), sizeof(float) * size_t(n) * size_t(m->nVoxels));
  } catch (const std::exception& exc) {
    SetError(err, err_size, std::string("inference failed: ") + exc.what());
    return 1;
  }
  return 0;
}

extern "C" void cf_close(cf_model* m) { delete m; }
