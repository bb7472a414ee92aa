// caloforge-g4 DESCRIPTION_FILE
// caloforge-g4-fast DESCRIPTION_FILE MODEL.pt VISIBLE_SCALES   (built with -DCALOFORGE_G4_FAST)
//
// The fast build attaches caloforge's fast-simulation model (FastShowerModel.hh) to the
// calorimeter envelope: MODEL.pt is a TorchScript export, VISIBLE_SCALES the per-layer factors
// (comma-separated, n_layers of them, or a single 1) from the model's energies to visible energy
// (the sampling fractions for a calibrated model). Its ready record is version 2 (two more uint32:
// noise_dim, n_conditions) and its event records start with four more float64 (see Scoring.cc).
//
// A persistent Geant4 worker: builds the calorimeter of the description, writes a ready record,
// then simulates blocks of events requested as text on stdin and writes binary event records on
// stdout (protocol: docs/geant4.md, "The application"). Geant4's own chatter goes
// nowhere (or to stderr with CALOFORGE_G4_VERBOSE=1); failures are one "error: ..." line on
// stderr and exit status 2.
#include "ActionInitialization.hh"
#include "Description.hh"
#include "DetectorConstruction.hh"
#include "PhysicsList.hh"
#include "PrimaryGeneratorAction.hh"
#include "Scoring.hh"
#ifdef CALOFORGE_G4_FAST
#include "FastShowerModel.hh"
#include "G4FastSimulationPhysics.hh"
#include "G4VModularPhysicsList.hh"
#endif

#include "G4ParticleTable.hh"
#include "G4RunManager.hh"
#include "G4StateManager.hh"
#include "G4UImanager.hh"
#include "G4VExceptionHandler.hh"
#include "G4coutDestination.hh"
#include "G4ios.hh"

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

namespace {

constexpr std::uint32_t kMagic = 0x34474643;  // "CFG4"
constexpr std::uint32_t kDone = 0x454E4F44;   // "DONE"
constexpr std::uint32_t kVersion = 1;

bool gVerbose = false;

// _exit: Geant4's static destructors are slow and not always safe to run half-initialised.
[[noreturn]] void Fail(std::string message) {
  for (char& c : message)
    if (c == '\n' || c == '\r') c = ' ';
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::fflush(stderr);
  ::_exit(2);
}

class Sink : public G4coutDestination {
 public:
  G4int ReceiveG4debug(const G4String& s) override { return Pass(s); }
  G4int ReceiveG4cout(const G4String& s) override { return Pass(s); }
  G4int ReceiveG4cerr(const G4String& s) override { return Pass(s); }

 private:
  static G4int Pass(const G4String& s) {
    if (gVerbose) std::fputs(s.c_str(), stderr);
    return 0;
  }
};

// Warnings (e.g. em0003, "G4EMLOW not set", in the data-free build) are dropped; anything that
// would abort Geant4 becomes the one error line.
class ExceptionHandler : public G4VExceptionHandler {
 public:
  G4bool Notify(const char* origin, const char* code, G4ExceptionSeverity severity,
                const char* description) override {
    if (severity == JustWarning) {
      if (gVerbose) std::fprintf(stderr, "warning: Geant4 %s (%s): %s\n", code, origin, description);
      return false;
    }
    std::string what(description ? description : "");
    what = what.substr(0, what.find_first_of("\n"));
    Fail(std::string("Geant4 exception ") + code + " in " + origin + ": " + what);
  }
};

// One request line split into tokens; false at end of input.
bool ReadLine(std::vector<std::string>& tokens) {
  static std::string line;
  line.clear();
  int c;
  while ((c = std::getchar()) != EOF && c != '\n') line.push_back(char(c));
  if (c == EOF && line.empty()) return false;
  tokens.clear();
  std::istringstream ss(line);
  for (std::string t; ss >> t;) tokens.push_back(t);
  return true;
}

double Number(const std::string& s, const char* what) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end || !std::isfinite(v)) Fail(std::string("bad ") + what + " '" + s + "' in request");
  return v;
}

std::uint64_t Seed(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || s[0] == '-' || *end || errno == ERANGE) Fail("bad seed '" + s + "' in request (uint64)");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  // Never outlive the parent: the kernel kills us when it exits, and if it already has (we were
  // reparented before prctl took effect) we leave at once.
  const pid_t parent = getppid();
#ifdef __linux__
  prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  if (getppid() != parent) ::_exit(0);
  std::signal(SIGPIPE, SIG_IGN);  // a closed pipe is reported by write() instead

  // The data channel is the original stdout; whatever anyone prints to stdout goes to stderr.
  const int data = dup(1);
  dup2(2, 1);
  gVerbose = std::getenv("CALOFORGE_G4_VERBOSE") && *std::getenv("CALOFORGE_G4_VERBOSE") == '1';

#ifdef CALOFORGE_G4_FAST
  if (argc != 4) Fail("usage: caloforge-g4-fast DESCRIPTION_FILE MODEL.pt VISIBLE_SCALES");
#else
  if (argc != 2) Fail("usage: caloforge-g4 DESCRIPTION_FILE");
#endif
  caloforge::Description desc;
  try {
    desc = caloforge::ReadDescription(argv[1]);
  } catch (const std::exception& e) {
    Fail(e.what());
  }
#ifdef CALOFORGE_G4_FAST
  // The model is opened before Geant4 starts: a bad export is one line, not a Geant4 abort.
  std::unique_ptr<caloforge::FastModelFile> fastModel;
  std::vector<double> visibleScale;
  try {
    fastModel = std::make_unique<caloforge::FastModelFile>(argv[2], desc.nVoxels, desc.name);
  } catch (const std::exception& e) {
    Fail(e.what());
  }
  {
    std::stringstream ss(argv[3]);
    for (std::string item; std::getline(ss, item, ',');) visibleScale.push_back(Number(item, "visible scale"));
    if (visibleScale.size() == 1) visibleScale.assign(desc.layers.size(), visibleScale[0]);
    if (visibleScale.size() != desc.layers.size())
      Fail("VISIBLE_SCALES needs one factor per layer (" + std::to_string(desc.layers.size()) + ") or one for all");
  }
  caloforge::FastShowers fastShowers(*fastModel);
#endif

  try {
    // The UI manager installs its own destination when it is created: create it first, then ours.
    G4UImanager::GetUIpointer();
    static Sink sink;  // Geant4 keeps a pointer to it until exit
    G4iosSetDestination(&sink);
    auto* runManager = new G4RunManager();
    runManager->SetVerboseLevel(0);
    new ExceptionHandler();  // registers itself, replacing the run manager's default handler

    caloforge::DetectorConstruction* detector = nullptr;
    try {
      detector = new caloforge::DetectorConstruction(desc);
    } catch (const std::exception& e) {
      Fail(e.what());
    }
    caloforge::Block block;
    caloforge::Scorer scorer(desc);
    runManager->SetUserInitialization(detector);
#ifdef CALOFORGE_G4_FAST
    G4VUserPhysicsList* physics = caloforge::MakePhysicsList(desc.cut);
    auto* modular = dynamic_cast<G4VModularPhysicsList*>(physics);
    if (!modular) Fail("the physics list is not modular: cannot add fast simulation");
    auto* fastPhysics = new G4FastSimulationPhysics();
    for (const char* name : {"e-", "e+", "gamma"}) fastPhysics->ActivateFastSimulation(name);
    modular->RegisterPhysics(fastPhysics);
    runManager->SetUserInitialization(physics);
    scorer.SetFast(&fastShowers, visibleScale);
    const double impactZ = desc.layers.front().zFront;
    detector->onRegion = [&fastShowers, impactZ](G4Region* region) {
      new caloforge::FastShowerModel(region, fastShowers, impactZ);  // owned by the region's manager
    };
#else
    runManager->SetUserInitialization(caloforge::MakePhysicsList(desc.cut));
#endif
    runManager->SetUserInitialization(new caloforge::ActionInitialization(block, scorer, data));
    runManager->Initialize();
    runManager->BeamOn(0);  // builds the physics tables now, not in the first event

#ifdef CALOFORGE_G4_FAST
    const std::uint32_t ready[6] = {kMagic, std::uint32_t(desc.nVoxels), std::uint32_t(desc.layers.size()), 2,
                                    std::uint32_t(fastModel->noiseDim), std::uint32_t(fastModel->conditionKinds.size())};
#else
    const std::uint32_t ready[4] = {kMagic, std::uint32_t(desc.nVoxels), std::uint32_t(desc.layers.size()), kVersion};
#endif
    caloforge::WriteAll(data, ready, sizeof ready);

    const double halfZ = detector->WorldHalfZ(), halfXY = detector->WorldHalfXY();
    G4ParticleTable* particles = G4ParticleTable::GetParticleTable();
    std::vector<std::string> t;
    while (ReadLine(t)) {
      if (getppid() != parent) ::_exit(0);
      if (t.empty()) continue;
      if (t[0] == "quit" && t.size() == 1) break;
#ifdef CALOFORGE_G4_FAST
      // "fast off" / "fast on": full simulation of everything, or the model again, in the same
      // process (the speed-up of a fast-simulation model is measured in one program and run)
      if (t[0] == "fast" && t.size() == 2 && (t[1] == "on" || t[1] == "off")) {
        fastShowers.enabled = t[1] == "on";
        continue;
      }
      // "fast batch event" (default): the network runs at the end of each event, on its showers;
      // "fast batch block": once per block of requests, on the showers of all its events
      if (t[0] == "fast" && t.size() == 3 && t[1] == "batch" && (t[2] == "event" || t[2] == "block")) {
        fastShowers.buffered = t[2] == "block";
        continue;
      }
#endif
      if (t[0] != "block" || t.size() != 3) Fail("bad request line (expected 'block <n> <particle>' or 'quit')");
      char* end = nullptr;
      const long n = std::strtol(t[1].c_str(), &end, 10);
      if (*end || t[1].empty() || n < 0 || n > 100000000) Fail("bad event count '" + t[1] + "' in request");
      block.particle = particles->FindParticle(t[2]);
#ifdef CALOFORGE_G4_DATA_FREE
      // the list defines a proton and a geantino for its own use; only these have physics
      if (t[2] != "gamma" && t[2] != "e-" && t[2] != "e+") block.particle = nullptr;
#endif
      if (!block.particle)
        Fail("particle " + t[2] + " is not available with the " + caloforge::PhysicsListName() + " physics list");
      block.events.clear();
      for (long i = 0; i < n; ++i) {
        if (!ReadLine(t)) Fail("input ends inside a block");
        if (t.size() != 8) Fail("an event line needs 8 values: seed E_MeV x y z dx dy dz");
        caloforge::GunRequest r;
        r.seed = Seed(t[0]);
        r.energy = Number(t[1], "energy");
        r.position.set(Number(t[2], "x"), Number(t[3], "y"), Number(t[4], "z"));
        r.direction.set(Number(t[5], "dx"), Number(t[6], "dy"), Number(t[7], "dz"));
        if (!(r.energy > 0)) Fail("energy must be > 0 MeV, got " + t[1]);
        if (!(r.direction.mag2() > 0)) Fail("direction must not be zero");
        r.direction = r.direction.unit();
        if (std::fabs(r.position.x()) >= halfXY || std::fabs(r.position.y()) >= halfXY ||
            std::fabs(r.position.z()) >= halfZ)
          Fail("gun position (" + t[2] + ", " + t[3] + ", " + t[4] + ") mm is outside the world");
        if (desc.particleFrame && std::fabs(r.direction.z()) < 1e-9)
          Fail("particle frame: the direction must cross the front plane (dz != 0)");
        block.events.push_back(r);
      }
#ifdef CALOFORGE_G4_FAST
      scorer.StartBlock();
      if (n) runManager->BeamOn(int(n));
      scorer.FinishBlock(data);
#else
      if (n) runManager->BeamOn(int(n));
#endif
      caloforge::WriteAll(data, &kDone, sizeof kDone);
    }
  } catch (const std::exception& e) {  // e.g. a missing data set in a full installation
    Fail(std::string("unexpected C++ exception: ") + e.what());
  }
  std::fflush(nullptr);
  ::_exit(0);
}
