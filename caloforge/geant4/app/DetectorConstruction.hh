// Slab calorimeter built from a Description: upstream dead material, then the layers, each a
// stack of `repeats` sampling cells, all boxes of +-half_width in x and y, in a G4_Galactic world.
#ifndef CALOFORGE_DETECTOR_CONSTRUCTION_HH
#define CALOFORGE_DETECTOR_CONSTRUCTION_HH

#include "Description.hh"
#include "G4VUserDetectorConstruction.hh"

#include <functional>
#include <vector>

class G4Material;
class G4Region;

namespace caloforge {

class DetectorConstruction : public G4VUserDetectorConstruction {
 public:
  // Resolves every material now (throws std::runtime_error naming the first unknown one), so that
  // Construct(), called deep inside G4RunManager::Initialize, cannot fail.
  explicit DetectorConstruction(const Description& desc);
  G4VPhysicalVolume* Construct() override;
  // Half length of the world along z (centred on z = 0): the gun must start inside it.
  double WorldHalfZ() const { return fWorldHalfZ; }
  double WorldHalfXY() const { return fDesc.halfWidth + 1000.; }
#ifdef CALOFORGE_G4_FAST
  // The fast-simulation build puts the upstream material and the layers in an envelope (a G4Region,
  // "caloforge_calorimeter") from the upstream front to the last layer's back; this is called with it from
  // ConstructSDandField, where Geant4 wants fast-simulation models attached.
  std::function<void(G4Region*)> onRegion;
  void ConstructSDandField() override;
#endif

 private:
  const Description& fDesc;
  G4Material* fVacuum = nullptr;
  std::vector<G4Material*> fUpstream;             // per upstream slab
  std::vector<std::vector<G4Material*>> fLayers;  // per layer, per slab of the cell
  double fWorldHalfZ = 0;
#ifdef CALOFORGE_G4_FAST
  G4Region* fRegion = nullptr;
#endif
};

}  // namespace caloforge

#endif
