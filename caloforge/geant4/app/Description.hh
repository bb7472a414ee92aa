// The geometry description the Python side writes (docs/geant4.md, "The application"), parsed and validated
// before any Geant4 object exists, so that a bad file fails fast with one clear line.
#ifndef CALOFORGE_DESCRIPTION_HH
#define CALOFORGE_DESCRIPTION_HH

#include <cstddef>
#include <string>
#include <vector>

namespace caloforge {

struct SlabSpec {
  std::string material;  // Geant4 NIST name
  double thickness;      // mm
  bool active;
};

enum class Readout { None, Polar, Cartesian };

struct LayerSpec {
  double zFront = 0, thickness = 0;  // mm
  int repeats = 1;
  std::vector<SlabSpec> slabs;  // one sampling cell, front to back
  Readout readout = Readout::None;
  int nR = 0, nAlpha = 0;
  std::vector<double> rEdges;  // nR + 1 edges (mm)
  int nx = 0, ny = 0;
  double cellX = 0, cellY = 0;
  std::size_t voxelOffset = 0;  // index of this layer's first voxel in the flat vector
  std::size_t nVoxels = 0;
};

struct Description {
  std::string name;
  bool particleFrame = false;  // readout frame "particle" (else "detector")
  double halfWidth = 0, cut = 0;
  std::vector<SlabSpec> upstream;
  std::vector<LayerSpec> layers;
  std::size_t nVoxels = 0;
};

// The largest number of slabs in one sampling cell: the slab index lives in the low bits of
// a placement's copy number (copy = layer << kSlabBits | slab).
constexpr int kSlabBits = 6;
constexpr int kMaxSlabsPerCell = 1 << kSlabBits;

// Throws std::runtime_error with a one-line message (without the "error: " prefix).
Description ReadDescription(const std::string& path);

}  // namespace caloforge

#endif
