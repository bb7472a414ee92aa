// Wires the gun and the scoring to the run manager (Geant4's usual entry point for user actions).
#ifndef CALOFORGE_ACTION_INITIALIZATION_HH
#define CALOFORGE_ACTION_INITIALIZATION_HH

#include "G4VUserActionInitialization.hh"

namespace caloforge {

struct Block;
class Scorer;

class ActionInitialization : public G4VUserActionInitialization {
 public:
  ActionInitialization(const Block& block, Scorer& scorer, int dataFd)
      : fBlock(block), fScorer(scorer), fDataFd(dataFd) {}
  void Build() const override;

 private:
  const Block& fBlock;
  Scorer& fScorer;
  int fDataFd;
};

}  // namespace caloforge

#endif
