// SanaTransformer: the chunk-causal forwards (spec §4.2-4.3): the cached streaming chunk forward
// (ForwardChunk) and the whole-sequence chunk-causal reference (ForwardChunkCausal). The
// per-operation causal variants live in blocks.cc, selected by Context::mode.
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "worker/models/sana/errors.h"
#include "worker/models/sana/transformer.h"
#include "worker/models/sana/transformer_context.h"

namespace wmserve::worker::sana {
namespace {

int64_t Bytes(const at::Tensor& t) {
  return t.defined() ? static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size())
                     : 0;
}

}  // namespace

SanaForwardOptions StreamingForwardOptions() {
  SanaForwardOptions options;
  options.gdn_camera_downscale = false;
  options.softmax_camera_downscale = false;
  options.camera_softmax_padded_scale = false;
  return options;
}

int64_t SanaBlockCache::bytes() const {
  int64_t total = Bytes(gdn.kv) + Bytes(gdn.z) + Bytes(cam_kv) + Bytes(conv_k_tail) +
                  Bytes(conv_k_cam_tail) + Bytes(ffn_tail);
  for (const ChunkKv& e : kv) total += Bytes(e.k) + Bytes(e.v) + Bytes(e.cam_k) + Bytes(e.cam_v);
  return total;
}

int64_t SanaStreamingCache::bytes() const {
  int64_t total = 0;
  for (const SanaBlockCache& b : blocks) total += b.bytes();
  return total;
}

at::Tensor SanaTransformer::ForwardChunk(const at::Tensor& hidden_states,
                                         const at::Tensor& timestep,
                                         const at::Tensor& encoder_hidden_states,
                                         const at::Tensor& encoder_attention_mask,
                                         const at::Tensor& camera_conditions,
                                         const at::Tensor& chunk_plucker, int64_t frame_offset,
                                         SanaStreamingCache& cache, bool save_state,
                                         const SanaForwardOptions& options) const {
  if (frame_offset != cache.next_frame) {
    throw InvalidInputError("SanaTransformer::ForwardChunk: frame_offset " +
                            std::to_string(frame_offset) + " != the cache's next frame " +
                            std::to_string(cache.next_frame) + " (chunk " +
                            std::to_string(cache.chunks) + ")");
  }
  if (!cache.blocks.empty() && static_cast<int>(cache.blocks.size()) != config_.num_layers) {
    throw InvalidInputError("SanaTransformer::ForwardChunk: cache has " +
                            std::to_string(cache.blocks.size()) + " blocks, the model " +
                            std::to_string(config_.num_layers));
  }
  if (hidden_states.defined() && hidden_states.dim() == 5 && !cache.blocks.empty()) {
    const at::Tensor& any = cache.blocks[0].ffn_tail;
    if (any.defined() && any.size(0) != hidden_states.size(0)) {
      throw InvalidInputError("SanaTransformer::ForwardChunk: batch " +
                              std::to_string(hidden_states.size(0)) + " != the cache's batch " +
                              std::to_string(any.size(0)));
    }
  }
  SanaForwardOptions opts = options;
  opts.rope_first_frame = frame_offset;
  std::vector<SanaBlockCache> saved;
  if (save_state) saved.resize(config_.num_layers);

  Context ctx;
  ctx.mode = Context::Mode::kStreaming;
  ctx.cache = &cache;
  ctx.chunk_index = cache.chunks;
  ctx.cached_chunks = CachedChunksFor(cache.chunks, cache.rule);
  ctx.save = save_state ? &saved : nullptr;
  at::Tensor out = ForwardImpl(hidden_states, timestep, encoder_hidden_states,
                               encoder_attention_mask, camera_conditions, chunk_plucker, opts, ctx);
  if (!save_state) return out;

  // Commit: new states and tails replace the old ones; the softmax K/V window keeps the chunks
  // the next chunk attends to.
  const std::vector<int64_t> keep = CachedChunksFor(cache.chunks + 1, cache.rule);
  auto kept = [&](int64_t chunk) { return std::find(keep.begin(), keep.end(), chunk) != keep.end(); };
  for (int i = 0; i < config_.num_layers; ++i) {
    std::vector<SanaBlockCache::ChunkKv> window;
    if (!cache.blocks.empty()) {
      for (SanaBlockCache::ChunkKv& e : cache.blocks[i].kv) {
        if (kept(e.chunk)) window.push_back(std::move(e));
      }
    }
    for (SanaBlockCache::ChunkKv& e : saved[i].kv) {
      if (kept(e.chunk)) window.push_back(std::move(e));
    }
    saved[i].kv = std::move(window);
  }
  cache.blocks = std::move(saved);
  cache.next_frame += hidden_states.size(2);
  cache.chunks += 1;
  return out;
}

at::Tensor SanaTransformer::ForwardChunkCausal(
    const at::Tensor& hidden_states, const at::Tensor& timestep,
    const at::Tensor& encoder_hidden_states, const at::Tensor& encoder_attention_mask,
    const at::Tensor& camera_conditions, const at::Tensor& chunk_plucker,
    const std::vector<FrameRange>& plan, const KvWindowRule& rule,
    const SanaForwardOptions& options) const {
  if (!hidden_states.defined() || hidden_states.dim() != 5) {
    throw InvalidInputError("SanaTransformer::ForwardChunkCausal: hidden_states must be 5-D");
  }
  const int64_t frames = hidden_states.size(2);
  const int64_t s = hidden_states.size(3) * hidden_states.size(4);
  int64_t expect = 0;
  std::vector<int64_t> sizes;
  for (const FrameRange& r : plan) {
    if (r.begin != expect || r.size() < 1) {
      throw InvalidInputError("SanaTransformer::ForwardChunkCausal: the chunk plan does not tile "
                              "[0, T) in order at frame " + std::to_string(expect));
    }
    sizes.push_back(r.size());
    expect = r.end;
  }
  if (expect != frames) {
    throw InvalidInputError("SanaTransformer::ForwardChunkCausal: the chunk plan covers " +
                            std::to_string(expect) + " frames, hidden_states has " +
                            std::to_string(frames));
  }
  // Softmax mask: queries of chunk j see the keys of CachedChunksFor(j) and of chunk j.
  const int64_t n = frames * s;
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
  at::Tensor mask = at::full({n, n}, -std::numeric_limits<float>::infinity(), f32);
  for (int64_t j = 0; j < static_cast<int64_t>(plan.size()); ++j) {
    std::vector<int64_t> visible = CachedChunksFor(j, rule);
    visible.push_back(j);
    for (const int64_t c : visible) {
      mask.narrow(0, plan[j].begin * s, plan[j].size() * s)
          .narrow(1, plan[c].begin * s, plan[c].size() * s)
          .zero_();
    }
  }
  Context ctx;
  ctx.mode = Context::Mode::kChunkCausal;
  ctx.chunk_sizes = std::move(sizes);
  ctx.chunk_mask = mask;
  return ForwardImpl(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                     camera_conditions, chunk_plucker, options, ctx);
}

}  // namespace wmserve::worker::sana
