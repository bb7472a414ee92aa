#include "ActionInitialization.hh"

#include "PrimaryGeneratorAction.hh"
#include "Scoring.hh"

namespace caloforge {

void ActionInitialization::Build() const {
  SetUserAction(new PrimaryGeneratorAction(fBlock, fScorer));
  SetUserAction(new SteppingAction(fScorer));
  SetUserAction(new EventAction(fScorer, fDataFd));
}

}  // namespace caloforge
