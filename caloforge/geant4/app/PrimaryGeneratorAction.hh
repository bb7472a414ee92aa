// The gun: one primary per event, taken from the block of requests that main() read from stdin.
#ifndef CALOFORGE_PRIMARY_GENERATOR_ACTION_HH
#define CALOFORGE_PRIMARY_GENERATOR_ACTION_HH

#include "G4ParticleGun.hh"
#include "G4ThreeVector.hh"
#include "G4VUserPrimaryGeneratorAction.hh"

#include <cstdint>
#include <vector>

class G4ParticleDefinition;

namespace caloforge {

class Scorer;

struct GunRequest {
  std::uint64_t seed;
  double energy;  // MeV
  G4ThreeVector position, direction;
};

struct Block {
  G4ParticleDefinition* particle = nullptr;
  std::vector<GunRequest> events;
};

class PrimaryGeneratorAction : public G4VUserPrimaryGeneratorAction {
 public:
  PrimaryGeneratorAction(const Block& block, Scorer& scorer) : fBlock(block), fScorer(scorer), fGun(1) {}
  // Reseeds the engine from the request first, so an event's result depends on its seed only,
  // not on what ran before it in this process.
  void GeneratePrimaries(G4Event* event) override;

 private:
  const Block& fBlock;
  Scorer& fScorer;
  G4ParticleGun fGun;
};

}  // namespace caloforge

#endif
