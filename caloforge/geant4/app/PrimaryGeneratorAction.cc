#include "PrimaryGeneratorAction.hh"

#include "G4Event.hh"
#include "G4SystemOfUnits.hh"
#include "Randomize.hh"
#include "Scoring.hh"

namespace caloforge {

void PrimaryGeneratorAction::GeneratePrimaries(G4Event* event) {
  // BeamOn(n) numbers the events of a block 0..n-1
  const GunRequest& r = fBlock.events.at(std::size_t(event->GetEventID()));
  // The 64-bit seed split into two 32-bit halves (MixMax uses 32 bits of each long); a zero half
  // is replaced because some CLHEP engines read the seed list up to a zero.
  long seeds[3] = {long(r.seed & 0xffffffffu), long(r.seed >> 32), 0};
  for (int k = 0; k < 2; ++k)
    if (!seeds[k]) seeds[k] = 0x5eed;
  G4Random::setTheSeeds(seeds, -1);

  fGun.SetParticleDefinition(fBlock.particle);
  fGun.SetParticleEnergy(r.energy * MeV);
  fGun.SetParticlePosition(r.position * mm);
  fGun.SetParticleMomentumDirection(r.direction);
  fScorer.BeginEvent(r.position * mm, r.direction);
  fGun.GeneratePrimaryVertex(event);
}

}  // namespace caloforge
