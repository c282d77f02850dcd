// File: per-forward state shared by the blocks of SanaTransformer (internal to transformer.cc
// and blocks.cc).
//
// Depends on LibTorch and the C++ standard library only.
#ifndef WMSERVE_WORKER_MODELS_SANA_TRANSFORMER_CONTEXT_H_
#define WMSERVE_WORKER_MODELS_SANA_TRANSFORMER_CONTEXT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "worker/models/sana/ops.h"
#include "worker/models/sana/transformer.h"

namespace wmserve::worker::sana {

struct SanaTransformer::Context {
  const SanaForwardOptions* options = nullptr;
  int64_t batch = 0, frames = 0, height = 0, width = 0;
  int64_t tokens_per_frame = 0;  // S = H * W
  int64_t tokens = 0;            // N = T * S
  at::Tensor t0;                 // (B, 1, T, 6C) block modulation (before the per-block table)
  at::Tensor y;                  // (B, 1, L, C) normed caption embedding
  at::Tensor text_mask_bias;     // (B, heads, 1, L) additive, parameter dtype; undefined = none
  RopeTable rope;                // (N, D/2) main-branch table
  RopeTable cam_rope;            // (N, D/4) camera re-slice
  bool camera = false;           // camera branch active
  at::Tensor ray_p;              // (B, N, 4, 4) P (world -> ray), float32
  at::Tensor ray_p_t;            // P^T
  at::Tensor ray_p_inv;          // P^-1
  at::Tensor plucker_emb;        // (B, N, C) or undefined

  // Causality of the temporal operations (GDN scans, short conv, FFN t_conv, softmax).
  enum class Mode { kBidirectional, kChunkCausal, kStreaming };
  Mode mode = Mode::kBidirectional;
  // kChunkCausal: chunk lengths in frames (sum T) and the softmax mask (N, N) float32, 0 where
  // a query may attend, -inf elsewhere.
  std::vector<int64_t> chunk_sizes;
  at::Tensor chunk_mask;
  // kStreaming: the cache read (blocks may be empty: first chunk), the chunks of it the softmax
  // blocks attend to, and where the KV-save pass writes the new per-block entries (null for a
  // read-only pass). Each new entry's kv holds only this chunk's K/V.
  const SanaStreamingCache* cache = nullptr;
  std::vector<int64_t> cached_chunks;
  int64_t chunk_index = 0;
  std::vector<SanaBlockCache>* save = nullptr;
  // Co-batched streaming chunks (ForwardChunkBatch): the first latent frame of every sample when
  // they differ (per-sample RoPE positions); empty = options->rope_first_frame for all.
  std::vector<int64_t> sample_first_frames;

  const SanaBlockCache* CachedBlock(int index) const {
    if (cache == nullptr || cache->blocks.empty()) return nullptr;
    return &cache->blocks[index];
  }
  SanaBlockCache* SavedBlock(int index) const {
    return save == nullptr ? nullptr : &(*save)[index];
  }

  bool tapping() const { return options != nullptr && static_cast<bool>(options->tap); }
  void Tap(const std::string& name, const at::Tensor& value) const {
    if (tapping()) options->tap(name, value);
  }
};

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_TRANSFORMER_CONTEXT_H_
