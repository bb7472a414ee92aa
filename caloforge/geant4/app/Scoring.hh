// Energy scoring: per layer active and passive energy, and active energy in the readout cells
// (docs/geant4.md, "The application"), filled by the stepping action and written by the event action.
#ifndef CALOFORGE_SCORING_HH
#define CALOFORGE_SCORING_HH

#include "Description.hh"
#include "G4Step.hh"
#include "G4ThreeVector.hh"
#include "G4UserEventAction.hh"
#include "G4UserSteppingAction.hh"
#include "Randomize.hh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace caloforge {

class FastShowers;

// Writes all bytes to fd or ends the process (the reader is gone: nobody left to tell).
void WriteAll(int fd, const void* data, std::size_t size);
double CpuSeconds();

class Scorer {
 public:
  explicit Scorer(const Description& desc);

  // Starts an event: clears the sums, fixes the particle frame (entry point on the plane
  // z = layers[0].z_front and the transverse basis) and starts the CPU clock.
  void BeginEvent(const G4ThreeVector& position, const G4ThreeVector& direction);
  // The event record: cpu seconds, active[n_layers], passive[n_layers] (float64), voxels (float32).
  void AppendRecord(std::vector<char>& out) const;
#ifdef CALOFORGE_G4_FAST
  // The fast-simulation build: the event's fast showers (generated at the end of the event) and the
  // record's extra fields (model CPU time, counters, the first fast shower's noise and conditions).
  void SetFast(FastShowers* fast, std::vector<double> visibleScale) {
    fFast = fast;
    fFastScale = std::move(visibleScale);
  }
  void FinishEvent();
  // Adds one generated shower (model units) to the readout: voxel v times the visible scale of its
  // layer; the layer's active sum gets the same, its passive sum the rest of the calibrated energy.
  void AddFast(const float* voxels, const std::vector<double>& visibleScale);
  // Buffer mode (request "fast batch block"): the block's records are kept here, the showers of all
  // its events generated in one batch at the end of the block, added into the records, then written.
  bool Buffered() const;
  std::vector<char>& BlockRecords() { return fBlockRecords; }
  void StartBlock();
  void FinishBlock(int fd);
#endif

  // Called for every step with an energy deposit: O(1) in the number of layers and slabs.
  void Score(const G4Step* step, double edep) {
    const G4StepPoint* pre = step->GetPreStepPoint();
    // copy = layer << kSlabBits | slab; the world (-1) and upstream slabs decode past the last layer
    const unsigned copy = unsigned(pre->GetPhysicalVolume()->GetCopyNo());
    const unsigned layer = copy >> kSlabBits;
    if (layer >= fNLayers) return;
    if (!(fActiveMask[layer] >> (copy & (kMaxSlabsPerCell - 1)) & 1u)) {
      fPassive[layer] += edep;
      return;
    }
    fActive[layer] += edep;
    if (!fAnyReadout) return;
    // the deposit is put at a uniformly random point of the step (seeded like the shower)
    const G4ThreeVector& a = pre->GetPosition();
    const G4ThreeVector p = a + G4UniformRand() * (step->GetPostStepPoint()->GetPosition() - a);
    if (!fParticleFrame) {
      Bin(layer, p.x(), p.y(), edep);
      return;
    }
    const G4ThreeVector d = p - fEntry;
    const double u = d.dot(fDir);  // depth along the particle
    const auto next = std::upper_bound(fDepthStart.begin(), fDepthStart.end(), u);
    if (next == fDepthStart.begin()) return;  // in front of the first layer
    const unsigned k = unsigned(next - fDepthStart.begin()) - 1;
    if (u >= fDepthStart[k] + fLayers[k].thickness) return;  // in a gap or behind the last layer
    const G4ThreeVector t = d - u * fDir;
    Bin(k, t.dot(fE1), t.dot(fE2), edep);
  }

 private:
  // Adds edep to the readout cell of layer k at transverse coordinates (x, y), if there is one.
  void Bin(unsigned k, double x, double y, double edep) {
    const LayerSpec& L = fLayers[k];
    if (L.readout == Readout::Polar) {
      if (!L.nR) return;
      const double r = std::sqrt(x * x + y * y);
      // geometry.py: i_r = searchsorted(r_edges, r, side="right") - 1, valid in [0, n_r)
      const auto it = std::upper_bound(L.rEdges.begin(), L.rEdges.end(), r);
      if (it == L.rEdges.begin() || it == L.rEdges.end()) return;
      const int ir = int(it - L.rEdges.begin()) - 1;
      int ia = int(std::floor((std::atan2(y, x) + M_PI) * (0.5 / M_PI) * L.nAlpha));
      ia = std::min(std::max(ia, 0), L.nAlpha - 1);
      fVoxels[L.voxelOffset + std::size_t(ia) * L.nR + ir] += edep;
    } else if (L.readout == Readout::Cartesian) {
      const double fx = std::floor(x / L.cellX + 0.5 * L.nx), fy = std::floor(y / L.cellY + 0.5 * L.ny);
      if (fx < 0 || fx >= L.nx || fy < 0 || fy >= L.ny) return;
      fVoxels[L.voxelOffset + std::size_t(fy) * L.nx + std::size_t(fx)] += edep;
    }
  }

  const std::vector<LayerSpec>& fLayers;
  const unsigned fNLayers;
  const bool fParticleFrame;
  bool fAnyReadout = false;
  std::vector<std::uint64_t> fActiveMask;  // per layer: bit s set when slab s of the cell is active
  std::vector<double> fDepthStart;         // particle frame: z_front - z0 per layer (increasing)
  std::vector<double> fActive, fPassive, fVoxels;
  G4ThreeVector fEntry, fDir, fE1, fE2;
  double fCpuStart = 0;
#ifdef CALOFORGE_G4_FAST
  FastShowers* fFast = nullptr;
  std::vector<double> fFastScale;  // per layer: visible energy per unit of model output
  std::vector<char> fBlockRecords;
#endif
};

class SteppingAction : public G4UserSteppingAction {
 public:
  explicit SteppingAction(Scorer& scorer) : fScorer(scorer) {}
  void UserSteppingAction(const G4Step* step) override {
    const double edep = step->GetTotalEnergyDeposit();
    if (edep > 0) fScorer.Score(step, edep);
  }

 private:
  Scorer& fScorer;
};

// Writes each event's record as soon as the event ends (the reader may stream them).
class EventAction : public G4UserEventAction {
 public:
  EventAction(Scorer& scorer, int dataFd) : fScorer(scorer), fFd(dataFd) {}
  void EndOfEventAction(const G4Event*) override;

 private:
#ifdef CALOFORGE_G4_FAST
  Scorer& fScorer;  // finishes the event's fast showers first
#else
  const Scorer& fScorer;
#endif
  int fFd;
  std::vector<char> fBuffer;  // reused: no allocation per event once grown
};

}  // namespace caloforge

#endif
