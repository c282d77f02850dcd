#include "worker/model.h"

namespace wmserve::worker {

const char* ModelStageName(ModelStage stage) {
  switch (stage) {
    case ModelStage::kImageEncode:
      return "image_encode";
    case ModelStage::kBackbone:
      return "backbone";
    case ModelStage::kRefiner:
      return "refiner";
    case ModelStage::kDecode:
      return "decode";
  }
  // Only reachable through a cast from an out-of-range integer.
  return "unknown";
}

}  // namespace wmserve::worker
