#include "Scoring.hh"

#ifdef CALOFORGE_G4_FAST
#include "FastShowerModel.hh"
#endif

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <unistd.h>

namespace caloforge {

void WriteAll(int fd, const void* data, std::size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "error: cannot write results: %s\n", std::strerror(errno));
      std::fflush(stderr);
      ::_exit(2);
    }
    p += n;
    size -= std::size_t(n);
  }
}

double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

Scorer::Scorer(const Description& desc)
    : fLayers(desc.layers),
      fNLayers(unsigned(desc.layers.size())),
      fParticleFrame(desc.particleFrame),
      fActiveMask(desc.layers.size(), 0),
      fActive(desc.layers.size()),
      fPassive(desc.layers.size()),
      fVoxels(desc.nVoxels) {
  const double z0 = desc.layers.front().zFront;
  for (std::size_t i = 0; i < desc.layers.size(); ++i) {
    const LayerSpec& L = desc.layers[i];
    for (std::size_t s = 0; s < L.slabs.size(); ++s)
      if (L.slabs[s].active) fActiveMask[i] |= std::uint64_t(1) << s;
    fDepthStart.push_back(L.zFront - z0);
    fAnyReadout = fAnyReadout || L.nVoxels > 0;
  }
}

void Scorer::BeginEvent(const G4ThreeVector& position, const G4ThreeVector& direction) {
  std::fill(fActive.begin(), fActive.end(), 0.);
  std::fill(fPassive.begin(), fPassive.end(), 0.);
  std::fill(fVoxels.begin(), fVoxels.end(), 0.);
  if (fParticleFrame) {
    // The caller guarantees direction.z() != 0 in the particle frame.
    fDir = direction.unit();
    fEntry = position + ((fLayers.front().zFront - position.z()) / fDir.z()) * fDir;
    // e1 = y x dir, e2 = dir x e1: (x, y) for dir = z, turning smoothly with the direction;
    // along +-y (no entry point there anyway) fall back to e1 = x.
    fE1 = G4ThreeVector(0, 1, 0).cross(fDir);
    fE1 = fE1.mag2() > 1e-24 ? fE1.unit() : G4ThreeVector(1, 0, 0);
    fE2 = fDir.cross(fE1);
  }
#ifdef CALOFORGE_G4_FAST
  if (fFast) fFast->BeginEvent();
#endif
  fCpuStart = CpuSeconds();
}

#ifdef CALOFORGE_G4_FAST
void Scorer::FinishEvent() {
  if (fFast) fFast->Flush([this](const float* voxels) { AddFast(voxels, fFastScale); });
}

bool Scorer::Buffered() const { return fFast && fFast->buffered; }

void Scorer::StartBlock() {
  fBlockRecords.clear();
  if (fFast) fFast->StartBuffer();
}

void Scorer::FinishBlock(int fd) {
  if (!fFast || !fFast->buffered) return;
  const std::size_t n = fActive.size(), nv = fVoxels.size();
  const std::size_t size = 8 * (5 + 2 * n) + 4 * (nv + fFast->first.size());
  fFast->FlushBuffer([&](int event, const float* voxels, double share) {
    // the record layout of AppendRecord (fast build); the same sums as AddFast, into the record
    char* rec = fBlockRecords.data() + std::size_t(event) * size;
    double head[5];  // model_cpu, n_fast, n_out_of_range, n_wrong_entry, cpu
    std::memcpy(head, rec, sizeof head);
    head[0] += share;
    head[4] += share;  // the event's CPU time includes its share of the batch
    std::memcpy(rec, head, sizeof head);
    char* active = rec + 40;
    char* passive = active + 8 * n;
    char* vox = passive + 8 * n;
    for (std::size_t k = 0; k < n; ++k) {
      const LayerSpec& L = fLayers[k];
      const double f = fFastScale[k];
      double sum = 0;
      for (std::size_t v = L.voxelOffset; v < L.voxelOffset + L.nVoxels; ++v) {
        float cell;
        std::memcpy(&cell, vox + 4 * v, 4);
        const double e = f * double(voxels[v]);
        cell = float(double(cell) + e);
        std::memcpy(vox + 4 * v, &cell, 4);
        sum += e;
      }
      double a, p;
      std::memcpy(&a, active + 8 * k, 8);
      std::memcpy(&p, passive + 8 * k, 8);
      a += sum;
      if (f > 0) p += sum * (1.0 / f - 1.0);
      std::memcpy(active + 8 * k, &a, 8);
      std::memcpy(passive + 8 * k, &p, 8);
    }
  });
  WriteAll(fd, fBlockRecords.data(), fBlockRecords.size());
  fBlockRecords.clear();
}

void Scorer::AddFast(const float* voxels, const std::vector<double>& visibleScale) {
  for (std::size_t k = 0; k < fNLayers; ++k) {
    const LayerSpec& L = fLayers[k];
    const double f = visibleScale[k];
    double sum = 0;
    for (std::size_t v = L.voxelOffset; v < L.voxelOffset + L.nVoxels; ++v) {
      const double e = f * double(voxels[v]);
      fVoxels[v] += e;
      sum += e;
    }
    fActive[k] += sum;
    if (f > 0) fPassive[k] += sum * (1.0 / f - 1.0);
  }
}
#endif

void Scorer::AppendRecord(std::vector<char>& out) const {
  const double cpu = CpuSeconds() - fCpuStart;
  const std::size_t n = fActive.size();
  const std::size_t start = out.size();
#ifdef CALOFORGE_G4_FAST
  // fast build: model_cpu, n_fast, n_out_of_range, n_wrong_entry, cpu, active, passive, voxels,
  // then the first fast shower's noise and conditions (float32; zeros when there was none)
  const double head[4] = {fFast ? fFast->modelCpu : 0., fFast ? double(fFast->nFast) : 0.,
                          fFast ? double(fFast->nOutOfRange) : 0., fFast ? double(fFast->nWrongEntry) : 0.};
  const std::size_t extra = fFast ? fFast->first.size() : 0;
  out.resize(start + 8 * (5 + 2 * n) + 4 * (fVoxels.size() + extra));
  std::memcpy(out.data() + start, head, sizeof head);
  if (extra) std::memcpy(out.data() + start + 8 * (5 + 2 * n) + 4 * fVoxels.size(), fFast->first.data(), 4 * extra);
  char* p = out.data() + start + 32;  // the plain layout follows from here
#else
  out.resize(start + 8 * (1 + 2 * n) + 4 * fVoxels.size());
  char* p = out.data() + start;
#endif
  std::memcpy(p, &cpu, 8);
  std::memcpy(p + 8, fActive.data(), 8 * n);
  std::memcpy(p + 8 + 8 * n, fPassive.data(), 8 * n);
  char* v = p + 8 * (1 + 2 * n);  // summed in double, emitted as float32
  for (std::size_t k = 0; k < fVoxels.size(); ++k) {
    const float f = float(fVoxels[k]);
    std::memcpy(v + 4 * k, &f, 4);
  }
}

void EventAction::EndOfEventAction(const G4Event*) {
  fBuffer.clear();
#ifdef CALOFORGE_G4_FAST
  fScorer.FinishEvent();
  if (fScorer.Buffered()) {  // written with the block, after the block's batch
    fScorer.AppendRecord(fScorer.BlockRecords());
    return;
  }
#endif
  fScorer.AppendRecord(fBuffer);
  WriteAll(fFd, fBuffer.data(), fBuffer.size());
}

}  // namespace caloforge
