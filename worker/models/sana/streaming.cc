// SanaTransformer: the chunk-causal forwards (spec §4.2-4.3): the cached streaming chunk forward
// (ForwardChunk) and the whole-sequence chunk-causal reference (ForwardChunkCausal). The
// per-operation causal variants live in blocks.cc, selected by Context::mode.
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <limits>
#include <stdexcept>
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

// The KV-save pass's result becomes the cache: new states and tails replace the old ones; the
// softmax K/V window keeps the chunks the next chunk attends to.
void CommitChunk(SanaStreamingCache& cache, std::vector<SanaBlockCache> saved,
                 int64_t chunk_frames) {
  const std::vector<int64_t> keep = CachedChunksFor(cache.chunks + 1, cache.rule);
  auto kept = [&](int64_t chunk) { return std::find(keep.begin(), keep.end(), chunk) != keep.end(); };
  for (size_t i = 0; i < saved.size(); ++i) {
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
  cache.next_frame += chunk_frames;
  cache.chunks += 1;
}

const SanaBlockCache::ChunkKv& EntryOf(const SanaBlockCache& block, int64_t chunk) {
  for (const SanaBlockCache::ChunkKv& e : block.kv) {
    if (e.chunk == chunk) return e;
  }
  throw std::runtime_error("streaming cache: chunk " + std::to_string(chunk) +
                           "'s K/V are missing from a softmax block");
}

// Concatenates one tensor field of several caches along the batch (undefined stays undefined).
at::Tensor CatRows(const std::vector<at::Tensor>& rows) {
  if (!rows.front().defined()) return at::Tensor();
  return at::cat(rows, 0);
}

// Row range [begin, begin + count) of a batched state as a tensor with its own storage (a view
// would keep the whole batch's state alive until every member left).
at::Tensor TakeRows(const at::Tensor& t, int64_t begin, int64_t count) {
  return t.defined() ? t.narrow(0, begin, count).clone() : at::Tensor();
}

}  // namespace

std::string StreamingBatchShape::ToString() const {
  std::string window;
  for (const int64_t t : window_tokens) window += (window.empty() ? "" : ",") + std::to_string(t);
  return "chunk " + std::to_string(chunk_frames) + " frames, history " +
         std::to_string(history_frames) + " frames, window tokens [" + window +
         "], conv tail " + std::to_string(conv_tail_frames) + ", ffn tail " +
         std::to_string(ffn_tail_frames);
}

StreamingBatchShape StreamingBatchShapeOf(const SanaStreamingCache& cache, int64_t chunk_frames) {
  StreamingBatchShape shape;
  shape.chunk_frames = chunk_frames;
  shape.history_frames = cache.next_frame;
  if (cache.blocks.empty()) return shape;
  const std::vector<int64_t> window = CachedChunksFor(cache.chunks, cache.rule);
  for (const SanaBlockCache& block : cache.blocks) {
    if (block.conv_k_tail.defined()) shape.conv_tail_frames = block.conv_k_tail.size(1);
    if (block.ffn_tail.defined()) shape.ffn_tail_frames = block.ffn_tail.size(2);
    if (!block.kv.empty() && shape.window_tokens.empty()) {
      for (const int64_t chunk : window) shape.window_tokens.push_back(EntryOf(block, chunk).k.size(2));
    }
  }
  // Past the first chunks the history length itself no longer changes what a pass reads.
  if (!shape.window_tokens.empty() || shape.conv_tail_frames || shape.ffn_tail_frames) {
    shape.history_frames = std::min<int64_t>(shape.history_frames, 1);
  }
  return shape;
}

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
  if (save_state) CommitChunk(cache, std::move(saved), hidden_states.size(2));
  return out;
}

at::Tensor SanaTransformer::ForwardChunkBatch(const at::Tensor& hidden_states,
                                              const at::Tensor& timestep,
                                              const at::Tensor& encoder_hidden_states,
                                              const at::Tensor& encoder_attention_mask,
                                              const at::Tensor& camera_conditions,
                                              const at::Tensor& chunk_plucker,
                                              const std::vector<SanaStreamingCache*>& caches,
                                              bool save_state,
                                              const SanaForwardOptions& options) const {
  constexpr const char* kWho = "SanaTransformer::ForwardChunkBatch";
  if (caches.empty()) throw InvalidInputError(std::string(kWho) + ": no caches");
  if (!hidden_states.defined() || hidden_states.dim() != 5 ||
      hidden_states.size(0) != static_cast<int64_t>(caches.size())) {
    throw InvalidInputError(std::string(kWho) + ": hidden_states must be (B, C, t, H, W) with B = " +
                            std::to_string(caches.size()) + " (one row per cache)");
  }
  if (caches.size() == 1) {
    return ForwardChunk(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                        camera_conditions, chunk_plucker, caches[0]->next_frame, *caches[0],
                        save_state, options);
  }
  const int64_t frames = hidden_states.size(2);
  const SanaStreamingCache& lead = *caches[0];
  const StreamingBatchShape shape = StreamingBatchShapeOf(lead, frames);
  for (size_t b = 1; b < caches.size(); ++b) {
    const StreamingBatchShape other = StreamingBatchShapeOf(*caches[b], frames);
    if (other != shape || caches[b]->rule.num_cached_blocks != lead.rule.num_cached_blocks ||
        caches[b]->rule.sink != lead.rule.sink) {
      throw InvalidInputError(std::string(kWho) + ": cache " + std::to_string(b) + " (" +
                              other.ToString() + ") cannot share a batch with cache 0 (" +
                              shape.ToString() + ")");
    }
    if (!caches[b]->blocks.empty() && caches[b]->blocks[0].ffn_tail.defined() &&
        caches[b]->blocks[0].ffn_tail.size(0) != 1) {
      throw InvalidInputError(std::string(kWho) + ": cache " + std::to_string(b) +
                              " holds more than one sample");
    }
  }

  // The history of all members side by side, labelled with the lead's chunk indices (the
  // window positions correspond one to one: equal batch shapes).
  SanaStreamingCache merged;
  merged.rule = lead.rule;
  merged.chunks = lead.chunks;
  merged.next_frame = lead.next_frame;
  const std::vector<int64_t> window = CachedChunksFor(lead.chunks, lead.rule);
  if (!lead.blocks.empty()) {
    merged.blocks.resize(config_.num_layers);
    for (int i = 0; i < config_.num_layers; ++i) {
      std::vector<at::Tensor> kv, z, cam, conv, conv_cam, ffn;
      for (const SanaStreamingCache* c : caches) {
        const SanaBlockCache& block = c->blocks[i];
        kv.push_back(block.gdn.kv);
        z.push_back(block.gdn.z);
        cam.push_back(block.cam_kv);
        conv.push_back(block.conv_k_tail);
        conv_cam.push_back(block.conv_k_cam_tail);
        ffn.push_back(block.ffn_tail);
      }
      SanaBlockCache& m = merged.blocks[i];
      m.gdn.kv = CatRows(kv);
      m.gdn.z = CatRows(z);
      m.cam_kv = CatRows(cam);
      m.conv_k_tail = CatRows(conv);
      m.conv_k_cam_tail = CatRows(conv_cam);
      m.ffn_tail = CatRows(ffn);
      if (lead.blocks[i].kv.empty()) continue;
      for (size_t j = 0; j < window.size(); ++j) {
        std::vector<at::Tensor> k, v, cam_k, cam_v;
        for (const SanaStreamingCache* c : caches) {
          const SanaBlockCache::ChunkKv& e =
              EntryOf(c->blocks[i], CachedChunksFor(c->chunks, c->rule)[j]);
          k.push_back(e.k);
          v.push_back(e.v);
          cam_k.push_back(e.cam_k);
          cam_v.push_back(e.cam_v);
        }
        m.kv.push_back({window[j], CatRows(k), CatRows(v), CatRows(cam_k), CatRows(cam_v)});
      }
    }
  }

  std::vector<SanaBlockCache> saved;
  if (save_state) saved.resize(config_.num_layers);
  Context ctx;
  ctx.mode = Context::Mode::kStreaming;
  ctx.cache = &merged;
  ctx.chunk_index = lead.chunks;
  ctx.cached_chunks = window;
  ctx.save = save_state ? &saved : nullptr;
  for (const SanaStreamingCache* c : caches) ctx.sample_first_frames.push_back(c->next_frame);
  const at::Tensor out = ForwardImpl(hidden_states, timestep, encoder_hidden_states,
                                     encoder_attention_mask, camera_conditions, chunk_plucker,
                                     options, ctx);
  if (!save_state) return out;

  // Each member commits its own row, relabelled with its own chunk index.
  for (size_t b = 0; b < caches.size(); ++b) {
    const int64_t row = static_cast<int64_t>(b);
    std::vector<SanaBlockCache> mine(saved.size());
    for (size_t i = 0; i < saved.size(); ++i) {
      const SanaBlockCache& s = saved[i];
      SanaBlockCache& m = mine[i];
      m.gdn.kv = TakeRows(s.gdn.kv, row, 1);
      m.gdn.z = TakeRows(s.gdn.z, row, 1);
      m.cam_kv = TakeRows(s.cam_kv, row, 1);
      m.conv_k_tail = TakeRows(s.conv_k_tail, row, 1);
      m.conv_k_cam_tail = TakeRows(s.conv_k_cam_tail, row, 1);
      m.ffn_tail = TakeRows(s.ffn_tail, row, 1);
      for (const SanaBlockCache::ChunkKv& e : s.kv) {
        m.kv.push_back({caches[b]->chunks, TakeRows(e.k, row, 1), TakeRows(e.v, row, 1),
                        TakeRows(e.cam_k, row, 1), TakeRows(e.cam_v, row, 1)});
      }
    }
    CommitChunk(*caches[b], std::move(mine), frames);
  }
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
