#include "DetectorConstruction.hh"

#include "G4Box.hh"
#include "G4LogicalVolume.hh"
#include "G4Material.hh"
#include "G4NistManager.hh"
#include "G4PVPlacement.hh"
#include "G4Region.hh"
#include "G4SystemOfUnits.hh"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <utility>

namespace caloforge {

namespace {
G4Material* Nist(const std::string& name, const std::string& where) {
  // warning=false: the unknown name is reported once, by us, as the one error line
  G4Material* m = G4NistManager::Instance()->FindOrBuildMaterial(name, true, false);
  if (!m) throw std::runtime_error("unknown material " + name + " in " + where);
  return m;
}
}  // namespace

DetectorConstruction::DetectorConstruction(const Description& desc) : fDesc(desc) {
  fVacuum = Nist("G4_Galactic", "the world");
  for (std::size_t j = 0; j < desc.upstream.size(); ++j)
    fUpstream.push_back(Nist(desc.upstream[j].material, "upstream slab " + std::to_string(j)));
  double zMin = desc.layers.front().zFront, zMax = zMin;
  for (std::size_t i = 0; i < desc.layers.size(); ++i) {
    std::vector<G4Material*> cell;
    for (const SlabSpec& s : desc.layers[i].slabs) cell.push_back(Nist(s.material, "layer " + std::to_string(i)));
    fLayers.push_back(std::move(cell));
    zMax = std::max(zMax, desc.layers[i].zFront + desc.layers[i].thickness);
  }
  for (const SlabSpec& s : desc.upstream) zMin -= s.thickness;
  fWorldHalfZ = std::max(std::fabs(zMin), std::fabs(zMax)) + 1 * m;
}

G4VPhysicalVolume* DetectorConstruction::Construct() {
  const double hw = fDesc.halfWidth * mm;
  auto* worldLV = new G4LogicalVolume(new G4Box("World", hw + 1 * m, hw + 1 * m, fWorldHalfZ), fVacuum, "World");
  // copy number -1: decodes to no layer, so the stepping action ignores the world at once
  auto* world = new G4PVPlacement(nullptr, {}, worldLV, "World", nullptr, false, -1);

  // One logical volume per distinct (material, thickness): 90 layers of W + Si need two, and
  // Geant4 shares the navigation voxels of a logical volume between all its placements.
  std::map<std::pair<G4Material*, double>, G4LogicalVolume*> volumes;
  auto volume = [&](G4Material* mat, double t) {
    G4LogicalVolume*& lv = volumes[{mat, t}];
    if (!lv) {
      const std::string name = mat->GetName() + "_" + std::to_string(volumes.size());
      lv = new G4LogicalVolume(new G4Box(name, hw, hw, 0.5 * t * mm), mat, name);
    }
    return lv;
  };
  // Slabs are placed directly in the world (no envelopes; the fast-simulation build: in one, the
  // region of the model): one navigation level, and the mother's smart voxels make the z lookup
  // O(1) however many slabs there are.
  G4LogicalVolume* mother = worldLV;
  double zShift = 0;  // mother's centre in global z
  auto place = [&](G4Material* mat, double t, double zFront, int copy) {
    G4LogicalVolume* lv = volume(mat, t);
    new G4PVPlacement(nullptr, G4ThreeVector(0, 0, (zFront + 0.5 * t - zShift) * mm), lv, lv->GetName(), mother,
                      false, copy, false);
  };

#ifdef CALOFORGE_G4_FAST
  // The envelope holds the upstream material and the layers: the model was trained on particles
  // entering the upstream material (a data set's incident particle), so that is where it takes over.
  {
    double z0 = fDesc.layers.front().zFront, z1 = z0;
    for (const SlabSpec& s : fDesc.upstream) z0 -= s.thickness;
    for (const LayerSpec& L : fDesc.layers) z1 = std::max(z1, L.zFront + L.thickness);
    zShift = 0.5 * (z0 + z1);
    auto* envLV = new G4LogicalVolume(new G4Box("CaloEnvelope", hw, hw, 0.5 * (z1 - z0) * mm), fVacuum, "CaloEnvelope");
    // copy number -1 as the world's: the gaps between layers are not scored
    new G4PVPlacement(nullptr, G4ThreeVector(0, 0, zShift * mm), envLV, "CaloEnvelope", worldLV, false, -1, false);
    fRegion = new G4Region("caloforge_calorimeter");
    envLV->SetRegion(fRegion);
    fRegion->AddRootLogicalVolume(envLV);
    mother = envLV;
  }
#endif
  // Upstream slabs end at the first layer's front; their "layer" index n_layers means "not scored".
  const int unscored = int(fDesc.layers.size()) << kSlabBits;
  double z = fDesc.layers.front().zFront;
  for (const SlabSpec& s : fDesc.upstream) z -= s.thickness;
  for (std::size_t j = 0; j < fDesc.upstream.size(); ++j) {
    place(fUpstream[j], fDesc.upstream[j].thickness, z, unscored + int(j));
    z += fDesc.upstream[j].thickness;
  }
  for (std::size_t i = 0; i < fDesc.layers.size(); ++i) {
    const LayerSpec& L = fDesc.layers[i];
    if (!L.repeats) continue;  // placeholder layer
    const double pitch = L.thickness / L.repeats;
    for (int r = 0; r < L.repeats; ++r) {
      double zs = L.zFront + r * pitch;  // from the layer front each cell: no accumulated rounding
      for (std::size_t s = 0; s < L.slabs.size(); ++s) {
        place(fLayers[i][s], L.slabs[s].thickness, zs, int(i) << kSlabBits | int(s));
        zs += L.slabs[s].thickness;
      }
    }
  }
  return world;
}

#ifdef CALOFORGE_G4_FAST
void DetectorConstruction::ConstructSDandField() {
  if (onRegion) onRegion(fRegion);
}
#endif

}  // namespace caloforge
