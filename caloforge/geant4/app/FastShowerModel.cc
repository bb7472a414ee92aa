#ifdef CALOFORGE_G4_FAST
#include "FastShowerModel.hh"

#include "caloforge_inference.h"

#include "G4Electron.hh"
#include "G4EventManager.hh"
#include "G4Event.hh"
#include "G4FastStep.hh"
#include "G4Box.hh"
#include "G4FastTrack.hh"
#include "G4Gamma.hh"
#include "G4Positron.hh"
#include "G4SystemOfUnits.hh"
#include "Randomize.hh"

#include <cmath>
#include <cstdlib>
#include <dlfcn.h>
#include <sstream>
#include <stdexcept>
#include <ctime>
#include <unistd.h>

namespace caloforge {

namespace {

// The inference library (inference/caloforge_inference.cc, LibTorch's ABI), loaded at run time
// with RTLD_DEEPBIND: the Geant4 libraries export old-ABI instances of libstdc++ templates
// (std::__detail::_Scanner<char>, holding a std::string) that would otherwise take the place of
// LibTorch's own in its symbol lookups, and crash torch::jit::load. Deep binding makes LibTorch
// resolve its symbols in its own libraries first.
struct InferenceApi {
  decltype(&cf_open) open = nullptr;
  decltype(&cf_meta) meta = nullptr;
  decltype(&cf_n_voxels) nVoxels = nullptr;
  decltype(&cf_noise_dim) noiseDim = nullptr;
  decltype(&cf_n_conditions) nConditions = nullptr;
  decltype(&cf_generate) generate = nullptr;
  decltype(&cf_close) close = nullptr;
};

const InferenceApi& Api() {
  static InferenceApi api;
  if (api.open) return api;
  std::string path;
  if (const char* env = std::getenv("CALOFORGE_INFERENCE_LIBRARY")) {
    path = env;
  } else {  // next to this executable
    char exe[4096];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    path = n > 0 ? std::string(exe, std::size_t(n)) : std::string("./x");
    path = path.substr(0, path.rfind('/') + 1) + "libcaloforge_inference.so";
  }
  void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!lib) {
    const char* why = ::dlerror();
    throw std::runtime_error("cannot load the inference library " + path + ": " + (why ? why : "?"));
  }
  auto sym = [&](const char* name) {
    void* f = ::dlsym(lib, name);
    if (!f) throw std::runtime_error("the inference library " + path + " lacks " + name);
    return f;
  };
  InferenceApi a;
  a.meta = reinterpret_cast<decltype(a.meta)>(sym("cf_meta"));
  a.nVoxels = reinterpret_cast<decltype(a.nVoxels)>(sym("cf_n_voxels"));
  a.noiseDim = reinterpret_cast<decltype(a.noiseDim)>(sym("cf_noise_dim"));
  a.nConditions = reinterpret_cast<decltype(a.nConditions)>(sym("cf_n_conditions"));
  a.generate = reinterpret_cast<decltype(a.generate)>(sym("cf_generate"));
  a.close = reinterpret_cast<decltype(a.close)>(sym("cf_close"));
  a.open = reinterpret_cast<decltype(a.open)>(sym("cf_open"));
  api = a;
  return api;
}

std::vector<double> Numbers(const char* text) {
  std::vector<double> out;
  std::istringstream in(text ? text : "");
  for (std::string s; in >> s;) out.push_back(std::strtod(s.c_str(), nullptr));
  return out;
}

double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double Number(cf_model* m, const char* key, double fallback) {
  const char* v = Api().meta(m, key);
  return v && *v ? std::strtod(v, nullptr) : fallback;
}

}  // namespace

FastModelFile::FastModelFile(const std::string& path, std::size_t readoutVoxels, const std::string& readoutName) {
  char err[1024] = {0};
  fModel = Api().open(path.c_str(), err, sizeof err);
  if (!fModel) throw std::runtime_error(std::string("fast model ") + err);
  try {
    nVoxels = Api().nVoxels(fModel);
    noiseDim = Api().noiseDim(fModel);
    family = Api().meta(fModel, "family") ? Api().meta(fModel, "family") : "";
    geometry = Api().meta(fModel, "geometry") ? Api().meta(fModel, "geometry") : "";
    if (std::size_t(nVoxels) != readoutVoxels)
      throw std::runtime_error("fast model " + path + " generates " + std::to_string(nVoxels) + " voxels (geometry " +
                               geometry + "), the simulated geometry " + readoutName + " reads out " +
                               std::to_string(readoutVoxels));
    const char* dist = Api().meta(fModel, "noise_distribution");
    if (!dist || std::string(dist) != "normal")
      throw std::runtime_error("fast model " + path + ": noise distribution '" + (dist ? dist : "") +
                               "' is not supported (normal only)");
    noiseMean = Numbers(Api().meta(fModel, "noise_mean"));
    noiseStd = Numbers(Api().meta(fModel, "noise_std"));
    if (long(noiseMean.size()) != noiseDim || long(noiseStd.size()) != noiseDim)
      throw std::runtime_error("fast model " + path + ": noise_mean/noise_std do not have noise_dim entries");
    std::istringstream names(Api().meta(fModel, "condition_names") ? Api().meta(fModel, "condition_names") : "");
    for (std::string s; names >> s;) {
      if (s == "incident_energy") conditionKinds.push_back(kEnergy);
      else if (s == "incident_theta") conditionKinds.push_back(kTheta);
      else if (s == "incident_phi") conditionKinds.push_back(kPhi);
      else if (s == "impact_x") conditionKinds.push_back(kImpactX);
      else if (s == "impact_y") conditionKinds.push_back(kImpactY);
      else
        throw std::runtime_error("fast model " + path + " is conditioned on " + s +
                                 ", which a Geant4 track does not give (supported: incident_energy, incident_theta, "
                                 "incident_phi, impact_x, impact_y)");
    }
    if (conditionKinds.empty() || conditionKinds.front() != kEnergy)
      throw std::runtime_error("fast model " + path + ": the first condition must be incident_energy");
    eMin = Number(fModel, "energy_min_mev", 0);
    eMax = Number(fModel, "energy_max_mev", 1e300);
  } catch (...) {
    Api().close(fModel);
    fModel = nullptr;
    throw;
  }
}

FastModelFile::~FastModelFile() {
  if (fModel) Api().close(fModel);
}

void FastModelFile::Generate(long n, const float* noise, const float* conditions, float* out) {
  char err[1024] = {0};
  if (Api().generate(fModel, n, noise, conditions, out, err, sizeof err))
    throw std::runtime_error(std::string("fast model: ") + err);
}

void FastShowers::BeginEvent() {
  if (!buffered) StartBuffer();  // per-event batches: nothing carries over
  ++fEvent;
  modelCpu = 0;
  nFast = nOutOfRange = nWrongEntry = 0;
  first.assign(std::size_t(fModel.noiseDim) + fModel.conditionKinds.size(), 0.f);
}

void FastShowers::Add(const std::vector<float>& noise, const std::vector<float>& conditions) {
  if (!nFast) {
    std::copy(noise.begin(), noise.end(), first.begin());
    std::copy(conditions.begin(), conditions.end(), first.begin() + noise.size());
  }
  ++nFast;
  fNoise.insert(fNoise.end(), noise.begin(), noise.end());
  fConditions.insert(fConditions.end(), conditions.begin(), conditions.end());
  fEventOf.push_back(fEvent);
}

void FastShowers::Flush(const std::function<void(const float*)>& deposit) {
  if (buffered || !nFast) return;
  const double start = ProcessCpuSeconds();
  fOut.resize(std::size_t(nFast) * std::size_t(fModel.nVoxels));
  fModel.Generate(nFast, fNoise.data(), fConditions.data(), fOut.data());
  modelCpu += ProcessCpuSeconds() - start;
  for (int i = 0; i < nFast; ++i) deposit(fOut.data() + std::size_t(i) * std::size_t(fModel.nVoxels));
}

void FastShowers::StartBuffer() {
  fNoise.clear();
  fConditions.clear();
  fEventOf.clear();
  fEvent = -1;
}

void FastShowers::FlushBuffer(const std::function<void(int, const float*, double)>& deposit) {
  const long n = long(fEventOf.size());
  if (!n) return;
  const double start = ProcessCpuSeconds();
  fOut.resize(std::size_t(n) * std::size_t(fModel.nVoxels));
  fModel.Generate(n, fNoise.data(), fConditions.data(), fOut.data());
  const double share = (ProcessCpuSeconds() - start) / double(n);
  for (long i = 0; i < n; ++i)
    deposit(fEventOf[std::size_t(i)], fOut.data() + std::size_t(i) * std::size_t(fModel.nVoxels), share);
  StartBuffer();
}

FastShowerModel::FastShowerModel(G4Region* region, FastShowers& showers, double impactZ)
    : G4VFastSimulationModel("caloforge_fast_shower", region), fShowers(showers), fImpactZ(impactZ) {}

G4bool FastShowerModel::IsApplicable(const G4ParticleDefinition& p) {
  return &p == G4Gamma::Definition() || &p == G4Electron::Definition() || &p == G4Positron::Definition();
}

G4bool FastShowerModel::ModelTrigger(const G4FastTrack& ft) {
  if (!fShowers.enabled) return false;
  const G4Track* t = ft.GetPrimaryTrack();
  // Only a track crossing into the envelope is a candidate: one born inside (a secondary of a
  // transported shower) is not on its surface. The trigger is asked at every step inside, so the
  // crossing is recognised by position and counted once per track.
  const G4ThreeVector p = ft.GetPrimaryTrackLocalPosition(), d = ft.GetPrimaryTrackLocalDirection();
  const auto* box = static_cast<const G4Box*>(ft.GetEnvelopeSolid());
  constexpr double tol = 1e-6 * mm;
  const bool front = std::fabs(p.z() + box->GetZHalfLength()) < tol && d.z() > 0;
  const bool side = !front && (box->GetXHalfLength() - std::fabs(p.x()) < tol ||
                               box->GetYHalfLength() - std::fabs(p.y()) < tol ||
                               box->GetZHalfLength() - std::fabs(p.z()) < tol);
  if (!front && !side) return false;
  const int event = G4EventManager::GetEventManager()->GetConstCurrentEvent()->GetEventID();
  if (event == fLastEvent && t->GetTrackID() == fLastTrack) return false;
  fLastEvent = event;
  fLastTrack = t->GetTrackID();
  const double e = t->GetKineticEnergy();
  const FastModelFile& m = fShowers.Model();
  // the trained range, with the float32 rounding of the range's ends
  const bool inRange = e >= m.eMin * (1 - 1e-6) * MeV && e <= m.eMax * (1 + 1e-6) * MeV;
  // The fallbacks are counted for the incident particle (track 1): the secondaries of upstream
  // material below the trained range are ordinary transport, not a fallback.
  const bool primary = t->GetTrackID() == 1;
  if (!inRange) {
    if (front && primary) ++fShowers.nOutOfRange;
    return false;
  }
  if (side) {
    // entering through a side or the back: not what the model was trained on
    if (primary && p.dot(d) < 0) ++fShowers.nWrongEntry;
    return false;
  }
  return true;
}

void FastShowerModel::DoIt(const G4FastTrack& ft, G4FastStep& step) {
  const G4Track* t = ft.GetPrimaryTrack();
  const G4ThreeVector dir = t->GetMomentumDirection();
  // the impact point: where the track's line crosses the impact plane (the trigger wants dz > 0)
  G4ThreeVector pos = t->GetPosition() / mm;
  pos += ((fImpactZ - pos.z()) / dir.z()) * dir;
  FastModelFile& m = fShowers.Model();
  std::vector<float> cond, noise(std::size_t(m.noiseDim));
  // caloforge's conventions: direction = (cos th cos ph, cos th sin ph, sin th), th = pi/2 along z;
  for (int kind : m.conditionKinds) {
    switch (kind) {
      case FastModelFile::kEnergy: cond.push_back(float(t->GetKineticEnergy() / MeV)); break;
      case FastModelFile::kTheta: cond.push_back(float(std::asin(std::max(-1.0, std::min(1.0, dir.z()))))); break;
      case FastModelFile::kPhi: cond.push_back(float(std::atan2(dir.y(), dir.x()))); break;
      case FastModelFile::kImpactX: cond.push_back(float(pos.x())); break;
      case FastModelFile::kImpactY: cond.push_back(float(pos.y())); break;
    }
  }
  // the event's engine, reseeded from its request: the noise is reproducible per event
  for (long k = 0; k < m.noiseDim; ++k)
    noise[std::size_t(k)] = float(m.noiseMean[std::size_t(k)] + m.noiseStd[std::size_t(k)] * G4RandGauss::shoot());
  fShowers.Add(noise, cond);
  step.KillPrimaryTrack();
  step.ProposePrimaryTrackPathLength(0.0);
}

}  // namespace caloforge
#endif
