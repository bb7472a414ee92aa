#include "PhysicsList.hh"

#include "G4SystemOfUnits.hh"

#include <cfloat>

#ifdef CALOFORGE_G4_DATA_FREE

#include "G4ComptonScattering.hh"
#include "G4CoulombScattering.hh"
#include "G4EmParameters.hh"
#include "G4Electron.hh"
#include "G4GammaConversion.hh"
#include "G4Gamma.hh"
#include "G4Geantino.hh"
#include "G4KleinNishinaCompton.hh"
#include "G4MollerBhabhaModel.hh"
#include "G4PEEffectFluoModel.hh"
#include "G4PhotoElectricEffect.hh"
#include "G4PhysicsListHelper.hh"
#include "G4Positron.hh"
#include "G4Proton.hh"
#include "G4UrbanMscModel.hh"
#include "G4VModularPhysicsList.hh"
#include "G4VPhysicsConstructor.hh"
#include "G4WentzelVIModel.hh"
#include "G4eBremsstrahlung.hh"
#include "G4eBremsstrahlungRelModel.hh"
#include "G4eCoulombScatteringModel.hh"
#include "G4eIonisation.hh"
#include "G4eMultipleScattering.hh"
#include "G4eplusAnnihilation.hh"

namespace caloforge {
namespace {

// G4EmStandardPhysics without the pieces that read G4EMLOW. Differences from it: no Rayleigh
// scattering; Sandia-parametrised photoelectric effect (no Livermore tables, no fluorescence or
// Auger); eBremsstrahlungRelModel also below 1 GeV instead of the Seltzer-Berger tables
// (G4eBremParametrizedModel misbehaves in lead); no e+- pair production by e+-.
class DataFreeEmPhysics : public G4VPhysicsConstructor {
 public:
  DataFreeEmPhysics() : G4VPhysicsConstructor("caloforge-data-free-em") {}

  void ConstructParticle() override {
    G4Gamma::Definition();
    G4Electron::Definition();
    G4Positron::Definition();
    G4Geantino::Definition();
    // never produced here, but the e+- single-scattering model looks it up at initialisation
    G4Proton::Definition();
  }

  void ConstructProcess() override {
    G4PhysicsListHelper* ph = G4PhysicsListHelper::GetPhysicsListHelper();
    G4ParticleDefinition* gamma = G4Gamma::Definition();
    auto* pe = new G4PhotoElectricEffect();
    pe->SetEmModel(new G4PEEffectFluoModel());
    auto* compton = new G4ComptonScattering();
    compton->SetEmModel(new G4KleinNishinaCompton());
    ph->RegisterProcess(pe, gamma);
    ph->RegisterProcess(compton, gamma);
    ph->RegisterProcess(new G4GammaConversion(), gamma);  // its default models are data-free

    const double mscLimit = 100 * MeV;  // Urban below, WentzelVI + single scattering above: as standard
    for (G4ParticleDefinition* p : {static_cast<G4ParticleDefinition*>(G4Electron::Definition()),
                                    static_cast<G4ParticleDefinition*>(G4Positron::Definition())}) {
      auto* urban = new G4UrbanMscModel();
      urban->SetHighEnergyLimit(mscLimit);
      auto* wentzel = new G4WentzelVIModel();
      wentzel->SetLowEnergyLimit(mscLimit);
      auto* msc = new G4eMultipleScattering();
      msc->SetEmModel(urban);
      msc->SetEmModel(wentzel);

      auto* ssModel = new G4eCoulombScatteringModel();
      ssModel->SetLowEnergyLimit(mscLimit);
      ssModel->SetActivationLowEnergyLimit(mscLimit);
      // No ions in this list: a recoil nucleus would be a null particle. Its energy (keV to MeV)
      // is deposited on the spot instead, where the recoil would stop anyway.  A finite threshold:
      // an infinite one breaks the cross-section tables of hydrogen-bearing materials (Kapton).
      ssModel->SetRecoilThreshold(1 * TeV);
      auto* ss = new G4CoulombScattering();
      ss->SetEmModel(ssModel);
      ss->SetMinKinEnergy(mscLimit);

      auto* ion = new G4eIonisation();
      ion->SetEmModel(new G4MollerBhabhaModel());

      // Two RelModel instances: G4eBremsstrahlung splits its range at 1 GeV into two models and
      // would fill an empty low-energy slot with the data-driven Seltzer-Berger model.
      auto* brem = new G4eBremsstrahlung();
      auto* low = new G4eBremsstrahlungRelModel();
      low->SetHighEnergyLimit(1 * GeV);
      brem->SetEmModel(low);
      brem->SetEmModel(new G4eBremsstrahlungRelModel());

      ph->RegisterProcess(msc, p);
      ph->RegisterProcess(ion, p);
      ph->RegisterProcess(brem, p);
      if (p == G4Positron::Definition()) ph->RegisterProcess(new G4eplusAnnihilation(), p);
      ph->RegisterProcess(ss, p);
    }
  }
};

class DataFreePhysicsList : public G4VModularPhysicsList {
 public:
  explicit DataFreePhysicsList(double cut) {
    SetVerboseLevel(0);
    SetDefaultCutValue(cut * mm);
    G4EmParameters::Instance()->SetVerbose(0);
    RegisterPhysics(new DataFreeEmPhysics());
  }
};

}  // namespace

G4VUserPhysicsList* MakePhysicsList(double cut) { return new DataFreePhysicsList(cut); }
const char* PhysicsListName() { return "data-free-em"; }

}  // namespace caloforge

#else  // full Geant4 installation

#include "FTFP_BERT.hh"

namespace caloforge {

G4VUserPhysicsList* MakePhysicsList(double cut) {
  auto* list = new FTFP_BERT(0);
  list->SetDefaultCutValue(cut * mm);
  return list;
}
const char* PhysicsListName() { return "FTFP_BERT"; }

}  // namespace caloforge

#endif
