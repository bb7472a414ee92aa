// Compile-time choice of physics:
//  * -DCALOFORGE_G4_DATA_FREE: an electromagnetic list that reads no Geant4 data set (for the Geant4
//    libraries of the calzone wheel, shipped without G4EMLOW etc.): gamma, e-, e+ and geantino only.
//  * otherwise FTFP_BERT, Geant4's default list (needs a full installation with its data sets).
#ifndef CALOFORGE_PHYSICS_LIST_HH
#define CALOFORGE_PHYSICS_LIST_HH

class G4VUserPhysicsList;

namespace caloforge {

// cut: production cut (range) in mm, for all particles, in the default region.
G4VUserPhysicsList* MakePhysicsList(double cut);

// Name reported by the Python side's build.json ("data-free-em" | "FTFP_BERT").
const char* PhysicsListName();

}  // namespace caloforge

#endif
