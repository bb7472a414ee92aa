// caloforge_generate: showers from a caloforge TorchScript or AOTInductor export, with LibTorch only.
//
//   caloforge_generate MODEL.pt|MODEL.pt2 --energy MEV --n N [--seed S] [--batch B] [--threads T]
//                      [--condition NAME=VALUE ...] [--noise NOISE.csv] -o OUT.csv
//   caloforge_generate MODEL.pt|MODEL.pt2 --bench 1,100,10000 [--energy MEV] [--repeats R] [--threads T]
//
// MODEL.pt is written by `caloforge export --format torchscript` (run by the TorchScript
// interpreter, torch::jit::load), MODEL.pt2 by `caloforge export --format aoti` (an
// AOTInductor package: the graph compiled ahead of time to a shared library, run by
// torch::inductor::AOTIModelPackageLoader); the file name's suffix picks the loader.  Both
// map noise (N, noise_dim) and physical conditions (N, C: incident energy in MeV first,
// angles in rad, impact point in mm) to voxel energies in MeV; their metadata (caloforge.txt
// in the TorchScript file, the package metadata of the .pt2) says how to draw the noise, the
// condition order and the voxel count.
//
// Output: CSV, one shower per row: incident_energy, the other conditions, then the
// n_voxels voxel energies in MeV (the CaloChallenge voxel order).  The file is written
// under a temporary name and renamed when complete.  Errors: one line on stderr, exit 2.
#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// What caloforge.txt ("key value" lines) tells about the exported model.
struct ModelInfo {
  std::string family, geometry, distribution;
  int64_t n_voxels = 0, noise_dim = 0;
  std::vector<std::string> condition_names;
  std::vector<double> noise_mean, noise_std;
  double e_min = 0, e_max = 0;
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

double to_number(const std::string& text, const std::string& what) {
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return v;
  } catch (const std::exception&) {
    throw UsageError(what + ": '" + text + "' is not a number");
  }
}

std::vector<double> numbers(const std::string& text, const std::string& what) {
  std::vector<double> out;
  for (const auto& s : split(text, ' ')) out.push_back(to_number(s, what));
  return out;
}

// "key value" lines (caloforge.txt) as a map.
std::map<std::string, std::string> key_values(const std::string& text) {
  std::map<std::string, std::string> kv;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto space = line.find(' ');
    kv[line.substr(0, space)] = space == std::string::npos ? "" : line.substr(space + 1);
  }
  return kv;
}

// The flat metadata (the same keys in both formats) -> ModelInfo.
ModelInfo parse_info(const std::string& path, std::map<std::string, std::string> kv) {
  for (const char* key : {"n_voxels", "noise_dim", "noise_distribution", "condition_names"}) {
    if (!kv.count(key)) throw UsageError(path + ": not a caloforge export (its metadata lacks " + key + ")");
  }
  ModelInfo info;
  info.family = kv["family"];
  info.geometry = kv["geometry"];
  info.distribution = kv["noise_distribution"];
  info.n_voxels = static_cast<int64_t>(to_number(kv["n_voxels"], path + ": n_voxels"));
  info.noise_dim = static_cast<int64_t>(to_number(kv["noise_dim"], path + ": noise_dim"));
  info.condition_names = split(kv["condition_names"], ' ');
  info.e_min = kv.count("energy_min_mev") ? to_number(kv["energy_min_mev"], "energy_min_mev") : 0;
  info.e_max = kv.count("energy_max_mev") ? to_number(kv["energy_max_mev"], "energy_max_mev") : 0;
  if (info.distribution == "normal") {
    info.noise_mean = numbers(kv["noise_mean"], path + ": noise_mean");
    info.noise_std = numbers(kv["noise_std"], path + ": noise_std");
    if (static_cast<int64_t>(info.noise_mean.size()) != info.noise_dim ||
        static_cast<int64_t>(info.noise_std.size()) != info.noise_dim)
      throw UsageError(path + ": noise_mean/noise_std do not have noise_dim entries");
  }
  return info;
}

// The exported network, whichever runtime runs it: (noise, conditions) -> showers.
struct Model {
  ModelInfo info;
  std::string runtime;  // "torchscript" or "aoti"
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> forward;
};

std::string first_line(const std::string& text) {
  return text.substr(0, std::min(text.find('\n'), text.find(". ")));
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A TorchScript file and its caloforge.txt; any failure is one line.
Model load_torchscript(const std::string& path) {
  torch::jit::ExtraFilesMap extra{{"caloforge.txt", ""}};
  auto module = std::make_shared<torch::jit::Module>();
  try {
    *module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception& exc) {
    throw UsageError(path + ": not a TorchScript model file (" + first_line(exc.what()) + ")");
  }
  if (extra["caloforge.txt"].empty())
    throw UsageError(path + ": a TorchScript file, but not a caloforge export (no caloforge.txt); "
                     "export with `caloforge export --format torchscript`");
  Model model{parse_info(path, key_values(extra["caloforge.txt"])), "torchscript", nullptr};
  module->eval();
  model.forward = [module](const torch::Tensor& z, const torch::Tensor& c) {
    return module->forward({z, c}).toTensor();
  };
  return model;
}

// An AOTInductor package (.pt2): metadata first (read from the archive, nothing loaded), then the
// compiled library; any failure is one line.
Model load_aoti(const std::string& path) {
  std::unordered_map<std::string, std::string> meta;
  try {
    meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
  } catch (const std::exception& exc) {
    throw UsageError(path + ": not an AOTInductor package (" + first_line(exc.what()) + ")");
  }
  if (!meta.count("caloforge_metadata"))
    throw UsageError(path + ": an AOTInductor package, but not a caloforge export (no caloforge metadata); "
                     "export with `caloforge export --format aoti`");
  Model model{parse_info(path, std::map<std::string, std::string>(meta.begin(), meta.end())), "aoti", nullptr};
  std::shared_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  try {
    loader = std::make_shared<torch::inductor::AOTIModelPackageLoader>(path, "model");
  } catch (const std::exception& exc) {  // e.g. compiled for another CPU or torch version
    throw UsageError(path + ": the AOTInductor package cannot be loaded here (" + first_line(exc.what()) + ")");
  }
  model.forward = [loader](const torch::Tensor& z, const torch::Tensor& c) {
    return loader->run({z.contiguous(), c.contiguous()}).at(0);
  };
  return model;
}

Model load_model(const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  if (!probe) throw UsageError(path + ": cannot be opened");
  return ends_with(path, ".pt2") ? load_aoti(path) : load_torchscript(path);
}

// Noise as the model's sample_noise draws it: standard normal per column, times std plus mean.
torch::Tensor draw_noise(const ModelInfo& info, int64_t n, at::Generator& gen) {
  if (info.distribution != "normal")
    throw UsageError("noise distribution '" + info.distribution + "' is not supported by this example");
  auto z = at::randn({n, info.noise_dim}, gen, torch::kFloat32);
  auto mean = torch::tensor(std::vector<float>(info.noise_mean.begin(), info.noise_mean.end()));
  auto std = torch::tensor(std::vector<float>(info.noise_std.begin(), info.noise_std.end()));
  return z * std + mean;
}

torch::Tensor read_csv_matrix(const std::string& path, int64_t cols) {
  std::ifstream in(path);
  if (!in) throw UsageError(path + ": cannot be opened");
  std::vector<float> values;
  std::string line;
  int64_t rows = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto fields = split(line, ',');
    if (static_cast<int64_t>(fields.size()) != cols)
      throw UsageError(path + ": row " + std::to_string(rows + 1) + " has " + std::to_string(fields.size()) +
                       " columns, the model's noise has " + std::to_string(cols));
    for (const auto& f : fields) values.push_back(static_cast<float>(to_number(f, path)));
    ++rows;
  }
  return torch::from_blob(values.data(), {rows, cols}, torch::kFloat32).clone();
}

torch::Tensor run(const Model& model, const torch::Tensor& noise, const torch::Tensor& conditions) {
  return model.forward(noise, conditions);
}

struct Args {
  std::string model, output, noise_file, bench;
  double energy = 0;
  int64_t n = 0, batch = 10000, threads = 1, repeats = 5;
  uint64_t seed = 0;
  std::map<std::string, double> conditions;
};

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> v;
  for (int i = 1; i < argc; ++i) {  // --option=value is --option value
    std::string arg = argv[i];
    auto eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      v.push_back(arg.substr(0, eq));
      v.push_back(arg.substr(eq + 1));
    } else {
      v.push_back(arg);
    }
  }
  auto value = [&](size_t& i) -> const std::string& {
    if (i + 1 >= v.size()) throw UsageError(v[i] + " needs a value");
    return v[++i];
  };
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string& o = v[i];
    if (o == "--energy") a.energy = to_number(value(i), "--energy");
    else if (o == "--n") a.n = static_cast<int64_t>(to_number(value(i), "--n"));
    else if (o == "--seed") a.seed = static_cast<uint64_t>(to_number(value(i), "--seed"));
    else if (o == "--batch") a.batch = static_cast<int64_t>(to_number(value(i), "--batch"));
    else if (o == "--threads") a.threads = static_cast<int64_t>(to_number(value(i), "--threads"));
    else if (o == "--repeats") a.repeats = static_cast<int64_t>(to_number(value(i), "--repeats"));
    else if (o == "--noise") a.noise_file = value(i);
    else if (o == "--bench") a.bench = value(i);
    else if (o == "-o" || o == "--output") a.output = value(i);
    else if (o == "--condition") {
      const std::string& c = value(i);
      auto eq = c.find('=');
      if (eq == std::string::npos) throw UsageError("--condition needs NAME=VALUE, got '" + c + "'");
      a.conditions[c.substr(0, eq)] = to_number(c.substr(eq + 1), "--condition " + c.substr(0, eq));
    } else if (o == "-h" || o == "--help") {
      std::cout << "usage: caloforge_generate MODEL.pt|MODEL.pt2 --energy MEV --n N [--seed S] [--batch B]\n"
                   "       [--threads T] [--condition NAME=VALUE ...] [--noise NOISE.csv] -o OUT.csv\n"
                   "       caloforge_generate MODEL.pt|MODEL.pt2 --bench 1,100,10000 [--energy MEV] [--repeats R]\n"
                   "MODEL.pt: caloforge export --format torchscript; MODEL.pt2: caloforge export --format aoti\n";
      std::exit(0);
    } else if (!o.empty() && o[0] == '-') throw UsageError("unknown option " + o);
    else if (a.model.empty()) a.model = o;
    else throw UsageError("unexpected argument " + o);
  }
  if (a.model.empty()) throw UsageError("give the model file (caloforge export --format torchscript or aoti)");
  if (a.threads < 1 || a.batch < 1 || a.repeats < 1) throw UsageError("--threads, --batch and --repeats must be >= 1");
  return a;
}

// The physical conditions matrix (n, C) for one energy and fixed other conditions.
torch::Tensor condition_matrix(const ModelInfo& info, const Args& a, int64_t n) {
  std::vector<float> row;
  for (const auto& name : info.condition_names) {
    if (name == "incident_energy") row.push_back(static_cast<float>(a.energy));
    else if (a.conditions.count(name)) row.push_back(static_cast<float>(a.conditions.at(name)));
    else throw UsageError("the model is conditioned on " + name + ": give --condition " + name + "=VALUE");
  }
  auto one = torch::tensor(row).reshape({1, static_cast<int64_t>(row.size())});
  return one.expand({n, one.size(1)}).contiguous();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// CaloChallenge timing protocol: warm-up excluded, median over repeats of ms per shower.
int bench(const Model& module, const ModelInfo& info, Args a) {
  if (!(a.energy > 0)) a.energy = info.e_max > 0 ? std::sqrt(info.e_min * info.e_max) : 65536.0;
  at::Generator gen = at::detail::createCPUGenerator(a.seed);
  std::cout << "[";
  bool first = true;
  for (const auto& text : split(a.bench, ',')) {
    auto batch = static_cast<int64_t>(to_number(text, "--bench"));
    if (batch < 1) throw UsageError("--bench batch sizes must be >= 1");
    auto cond = condition_matrix(info, a, batch);
    int64_t calls = std::max<int64_t>(1, 10000 / batch / 10);  // ~1000 showers per repeat, >= 1 call
    for (int w = 0; w < 2; ++w) run(module, draw_noise(info, batch, gen), cond);
    std::vector<double> ms, cpu;
    for (int64_t r = 0; r < a.repeats; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      std::clock_t c0 = std::clock();
      for (int64_t c = 0; c < calls; ++c) run(module, draw_noise(info, batch, gen), cond);
      std::chrono::duration<double, std::milli> dt = std::chrono::steady_clock::now() - t0;
      ms.push_back(dt.count() / static_cast<double>(calls * batch));
      cpu.push_back(1e3 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC / static_cast<double>(calls * batch));
    }
    std::cout << (first ? "" : ", ") << "{\"batch\": " << batch << ", \"ms_per_shower\": " << median(ms)
              << ", \"cpu_ms_per_shower\": " << median(cpu) << ", \"repeats\": " << a.repeats
              << ", \"calls_per_repeat\": " << calls << "}";
    first = false;
  }
  std::cout << "]\n";
  return 0;
}

int generate(const Model& module, const ModelInfo& info, const Args& a) {
  if (a.output.empty()) throw UsageError("give the output file with -o OUT.csv");
  if (!(a.energy > 0)) throw UsageError("--energy must be a positive energy in MeV");
  torch::Tensor noise;
  int64_t n = a.n;
  if (!a.noise_file.empty()) {
    noise = read_csv_matrix(a.noise_file, info.noise_dim);
    if (n == 0) n = noise.size(0);
    if (noise.size(0) != n) throw UsageError(a.noise_file + ": has " + std::to_string(noise.size(0)) +
                                             " rows, --n asks for " + std::to_string(n));
  }
  if (n < 1) throw UsageError("--n must be a positive number of showers");
  if (info.e_max > 0 && (a.energy < info.e_min * (1 - 1e-9) || a.energy > info.e_max * (1 + 1e-9)))
    std::cerr << "warning: " << a.energy << " MeV is outside the trained range " << info.e_min << "-"
              << info.e_max << " MeV; the model extrapolates\n";
  auto cond_all = condition_matrix(info, a, n);  // fails before anything is written

  const std::string tmp = a.output + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) throw UsageError(a.output + ": cannot be written");
  try {
    std::fprintf(f, "%s", "incident_energy");
    for (size_t c = 1; c < info.condition_names.size(); ++c) std::fprintf(f, ",%s", info.condition_names[c].c_str());
    for (int64_t v = 0; v < info.n_voxels; ++v) std::fprintf(f, ",voxel_%lld", static_cast<long long>(v));
    std::fprintf(f, "\n");
    at::Generator gen = at::detail::createCPUGenerator(a.seed);
    for (int64_t lo = 0; lo < n; lo += a.batch) {
      int64_t m = std::min(a.batch, n - lo);
      auto z = noise.defined() ? noise.slice(0, lo, lo + m) : draw_noise(info, m, gen);
      auto cond = cond_all.slice(0, lo, lo + m);
      auto showers = run(module, z, cond).contiguous();
      if (showers.dim() != 2 || showers.size(1) != info.n_voxels)
        throw UsageError(a.model + ": the model returned the wrong shape");
      auto c = cond.accessor<float, 2>();
      auto s = showers.accessor<float, 2>();
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t k = 0; k < c.size(1); ++k) std::fprintf(f, k ? ",%.9g" : "%.9g", c[i][k]);
        for (int64_t v = 0; v < info.n_voxels; ++v) std::fprintf(f, ",%.9g", s[i][v]);
        std::fprintf(f, "\n");
      }
    }
    if (std::fclose(f) != 0) throw UsageError(a.output + ": write failed");
    f = nullptr;
    if (std::rename(tmp.c_str(), a.output.c_str()) != 0) throw UsageError(a.output + ": cannot be written");
  } catch (...) {
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  std::cerr << "wrote " << n << " showers (" << info.n_voxels << " voxels, " << info.geometry << ") to " << a.output
            << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a = parse_args(argc, argv);
    at::set_num_threads(static_cast<int>(a.threads));
    Model model = load_model(a.model);
    torch::NoGradGuard no_grad;
    return a.bench.empty() ? generate(model, model.info, a) : bench(model, model.info, a);
  } catch (const UsageError& exc) {
    std::cerr << "error: " << exc.what() << "\n";
    return 2;
  } catch (const std::exception& exc) {
    std::string why = exc.what();
    std::cerr << "error: " << why.substr(0, why.find('\n')) << "\n";
    return 2;
  }
}
