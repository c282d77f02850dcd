#include "server/rollout_hub.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "server/logging.h"
#include "server/status_util.h"

namespace wmserve::server {
namespace {

using log::Kv;

v1::WorkerState ToProto(scheduler::WorkerState s) {
  switch (s) {
    case scheduler::WorkerState::kLoading: return v1::WORKER_STATE_LOADING;
    case scheduler::WorkerState::kReady: return v1::WORKER_STATE_READY;
    case scheduler::WorkerState::kBusy: return v1::WORKER_STATE_BUSY;
    case scheduler::WorkerState::kDraining: return v1::WORKER_STATE_DRAINING;
    case scheduler::WorkerState::kDead: return v1::WORKER_STATE_DEAD;
  }
  return v1::WORKER_STATE_UNSPECIFIED;
}

scheduler::Priority ToPriority(v1::Priority p) {
  switch (p) {
    case v1::PRIORITY_HIGH: return scheduler::Priority::kHigh;
    case v1::PRIORITY_LOW: return scheduler::Priority::kLow;
    default: return scheduler::Priority::kNormal;
  }
}

// Rollouts that may share a batched forward on a co-batching worker: the same model, output
// size and model options (mode, prompt, ...). The worker checks exact compatibility chunk by
// chunk; this key only makes the scheduler put likely batch-mates together.
std::string BatchKey(const v1::RolloutRequest& request) {
  std::map<std::string, std::string> options(request.model_options().begin(),
                                             request.model_options().end());
  std::string key = absl::StrCat(request.model(), "|", request.output().width(), "x",
                                 request.output().height());
  for (const auto& [name, value] : options) {
    // Length-prefixed: no separator inside a value can make two option sets look alike.
    absl::StrAppend(&key, "|", name.size(), ":", name, "=", value.size(), ":", value);
  }
  return key;
}

v1::Priority FromPriority(scheduler::Priority p) {
  switch (p) {
    case scheduler::Priority::kHigh: return v1::PRIORITY_HIGH;
    case scheduler::Priority::kLow: return v1::PRIORITY_LOW;
    default: return v1::PRIORITY_NORMAL;
  }
}

bool IsTerminal(v1::RolloutState s) {
  return s == v1::ROLLOUT_STATE_SUCCEEDED || s == v1::ROLLOUT_STATE_CANCELLED ||
         s == v1::ROLLOUT_STATE_FAILED;
}

std::string JsonEscape(const std::string& in) {
  std::string out;
  for (char c : in) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

std::string NewRolloutPrefix() {
  std::random_device rd;
  return absl::StrFormat("r-%08x", rd());
}

}  // namespace

RolloutHub::RolloutHub(const SchedulerOptions& options, metrics::SchedulerMetrics* metrics)
    : options_(options),
      metrics_(metrics),
      policy_(options.fair_share),
      admission_([&] {
        scheduler::AdmissionOptions a;
        a.max_queued = options.max_queued;
        return a;
      }()),
      queue_([&] {
        size_t total = 0;
        for (size_t n : options.max_queued) total += n;
        return total;
      }()),
      ledger_(policy_.NewLedger()),
      id_prefix_(NewRolloutPrefix()) {}

// --- clients -------------------------------------------------------------------------------------

absl::StatusOr<std::string> RolloutHub::Submit(v1::RolloutRequest request, absl::Time deadline,
                                               ClientStream* client) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  if (!accepting_) {
    return Reject("shutdown", WithRetryAfter(absl::UnavailableError("scheduler is shutting down"),
                                             absl::Seconds(5)));
  }
  // Idempotent resubmission: the same client request id (per tenant) joins that rollout.
  std::string dedupe_key;
  if (!request.client_request_id().empty()) {
    dedupe_key = absl::StrCat(scheduler::TenantKey(request.tenant()), "/",
                              request.client_request_id());
    auto it = by_dedupe_key_.find(dedupe_key);
    if (it != by_dedupe_key_.end()) {
      if (Rollout* existing = FindLocked(it->second)) {
        WM_LOG(kInfo, "rollout_resubmitted") << Kv("rollout", existing->id)
                                             << Kv("client_request_id", request.client_request_id());
        AttachLocked(*existing, client, 0, /*existing=*/true);
        return existing->id;
      }
    }
  }
  if (!ModelKnownLocked(request.model())) {
    return Reject("unknown_model",
                  absl::NotFoundError(absl::StrCat("model \"", request.model(),
                                                   "\" is not served here (available: ",
                                                   absl::StrJoin(KnownModelsLocked(), ", "), ")")));
  }
  const std::string id = absl::StrCat(id_prefix_, "-", ++rollout_counter_);
  scheduler::QueuedRollout queued;
  queued.rollout_id = id;
  queued.model = request.model();
  queued.enqueued_at = now;
  queued.priority = ToPriority(request.priority());
  queued.tenant = request.tenant();
  auto weight = options_.tenant_weights.find(scheduler::TenantKey(request.tenant()));
  queued.tenant_weight = weight == options_.tenant_weights.end() ? 1.0 : weight->second;
  queued.deadline = deadline;
  queued.num_frames = request.num_frames();
  queued.state_bytes = StateBytesLocked(request.model());
  queued.batch_key = BatchKey(request);

  scheduler::AdmissionDecision decision = admission_.Decide(
      queued, queue_.items(), speed_, ServingSlotsLocked(request.model()), now);
  if (!decision.admitted()) {
    const bool full = decision.status.code() == absl::StatusCode::kResourceExhausted;
    absl::Status status = decision.status;
    if (decision.retry_after > absl::ZeroDuration()) {
      status = WithRetryAfter(std::move(status), decision.retry_after);
    }
    return Reject(full ? "queue_full" : "deadline", status);
  }
  if (absl::Status s = queue_.Push(queued); !s.ok()) {
    return Reject("queue_full", WithRetryAfter(s, absl::Seconds(1)));
  }

  Rollout& r = rollouts_[id];
  r.id = id;
  r.dedupe_key = dedupe_key;
  r.queued = queued;
  r.submitted = now;
  r.deadline = deadline;
  r.frames_total = request.num_frames();
  r.grace = std::min(absl::Seconds(request.reattach_grace_s()), options_.max_reattach_grace);
  r.request = std::move(request);
  r.state = v1::ROLLOUT_STATE_QUEUED;
  if (!dedupe_key.empty()) by_dedupe_key_[dedupe_key] = id;
  WM_LOG(kInfo, "rollout_state") << Kv("rollout", id) << Kv("state", "QUEUED")
                                 << Kv("model", r.request.model()) << Kv("frames", r.frames_total)
                                 << Kv("tenant", scheduler::TenantKey(r.request.tenant()))
                                 << Kv("priority", scheduler::PriorityName(queued.priority))
                                 << Kv("client_request_id", r.request.client_request_id());
  // Accepted goes out before anything a dispatch could send.
  AttachLocked(r, client, 0, /*existing=*/false);
  DispatchLocked(now);
  UpdateGaugesLocked();
  return id;
}

absl::Status RolloutHub::Attach(const std::string& id, uint32_t from_chunk, ClientStream* client) {
  absl::MutexLock lock(&mu_);
  Rollout* r = FindLocked(id);
  if (r == nullptr) return absl::NotFoundError(absl::StrCat("rollout \"", id, "\" not found"));
  const uint32_t oldest =
      r->buffer.empty() ? r->chunks_sent : r->buffer.front().chunk().index();
  if (from_chunk < oldest) {
    return absl::OutOfRangeError(absl::StrCat("rollout ", id, ": chunk ", from_chunk,
                                              " is no longer buffered (oldest buffered: ", oldest,
                                              ")"));
  }
  WM_LOG(kInfo, "rollout_attached") << Kv("rollout", id) << Kv("from_chunk", from_chunk)
                                    << Kv("state", v1::RolloutState_Name(r->state));
  AttachLocked(*r, client, from_chunk, /*existing=*/true);
  return absl::OkStatus();
}

// Sends Accepted and replays what the client missed, then (if the rollout already ended) the
// ending; otherwise the client joins the live broadcast.
void RolloutHub::AttachLocked(Rollout& r, ClientStream* client, uint32_t from_chunk,
                              bool existing) {
  v1::RolloutEvent accepted;
  accepted.mutable_accepted()->set_rollout_id(r.id);
  const int pos = queue_.PositionOf(r.id);
  accepted.mutable_accepted()->set_queue_position(pos < 0 ? 0 : static_cast<uint32_t>(pos));
  accepted.mutable_accepted()->set_existing(existing);
  client->Send(std::move(accepted));
  if (r.init_event) client->Send(*r.init_event);
  for (const v1::RolloutEvent& e : r.buffer) {
    if (e.chunk().index() >= from_chunk) client->Send(e);
  }
  if (IsTerminal(r.state)) {
    if (r.final_event) client->Send(*r.final_event);
    client->Close(ToGrpcStatus(r.end_status));
    return;
  }
  r.clients.push_back({client, from_chunk});
  r.orphaned_since = absl::InfinitePast();
}

void RolloutHub::ClientGone(const std::string& id, ClientStream* client) {
  absl::MutexLock lock(&mu_);
  Rollout* r = FindLocked(id);
  if (r == nullptr) return;
  auto it = std::find_if(r->clients.begin(), r->clients.end(),
                         [&](const Attached& a) { return a.stream == client; });
  if (it == r->clients.end()) return;
  r->clients.erase(it);
  client->Close(grpc::Status::CANCELLED);
  if (!r->clients.empty() || IsTerminal(r->state)) return;
  if (r->grace > absl::ZeroDuration()) {
    r->orphaned_since = absl::Now();
    WM_LOG(kInfo, "rollout_orphaned") << Kv("rollout", id)
                                      << Kv("grace_s", absl::ToDoubleSeconds(r->grace));
    return;
  }
  EndLocked(*r, absl::CancelledError("rollout cancelled: client cancelled or disconnected"),
            "client_cancel");
}

void RolloutHub::DetachClient(const std::string& id, ClientStream* client) {
  absl::MutexLock lock(&mu_);
  Rollout* r = FindLocked(id);
  if (r == nullptr) return;
  r->clients.erase(std::remove_if(r->clients.begin(), r->clients.end(),
                                  [&](const Attached& a) { return a.stream == client; }),
                   r->clients.end());
}

absl::StatusOr<v1::RolloutState> RolloutHub::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Rollout* r = FindLocked(id);
  if (r == nullptr) return absl::NotFoundError(absl::StrCat("rollout \"", id, "\" not found"));
  if (!IsTerminal(r->state)) {
    EndLocked(*r, absl::CancelledError("rollout cancelled by Cancel RPC"), "cancel_rpc");
  }
  return r->state;
}

absl::StatusOr<v1::RolloutStatus> RolloutHub::Get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Rollout* r = FindLocked(id);
  if (r == nullptr) return absl::NotFoundError(absl::StrCat("rollout \"", id, "\" not found"));
  v1::RolloutStatus s;
  s.set_rollout_id(r->id);
  s.set_model(r->request.model());
  s.set_state(r->state);
  const int pos = queue_.PositionOf(r->id);
  s.set_queue_position(pos < 0 ? 0 : static_cast<uint32_t>(pos));
  s.set_worker_id(r->worker_id);
  s.set_frames_done(r->frames_done);
  s.set_frames_total(r->frames_total);
  s.set_chunks_sent(r->chunks_sent);
  s.set_error_code(static_cast<int>(r->end_status.code()));
  s.set_error_message(std::string(r->end_status.message()));
  s.set_resumes(r->resumes);
  s.set_tenant(scheduler::TenantKey(r->request.tenant()));
  s.set_priority(FromPriority(r->queued.priority));
  const absl::Time now = absl::Now();
  const absl::Time started = r->started == absl::InfinitePast() ? now : r->started;
  s.set_queue_seconds(absl::ToDoubleSeconds(
      (r->state == v1::ROLLOUT_STATE_QUEUED ? now : started) - r->submitted));
  if (r->started != absl::InfinitePast()) {
    const absl::Time end = IsTerminal(r->state) ? r->finished : now;
    s.set_run_seconds(absl::ToDoubleSeconds(end - r->started));
  }
  return s;
}

v1::ListWorkersResponse RolloutHub::ListWorkers() {
  absl::MutexLock lock(&mu_);
  v1::ListWorkersResponse out;
  for (const auto& [id, w] : registry_.workers()) {
    v1::WorkerInfo* info = out.add_workers();
    info->set_worker_id(id);
    info->set_name(w.description.name);
    info->set_device(w.description.device);
    info->set_host(w.description.host);
    info->set_pid(w.description.pid);
    for (const auto& m : w.description.models) info->add_models(m);
    info->set_state(ToProto(w.state));
    info->set_running_rollouts(static_cast<uint32_t>(w.running.size()));
    info->set_max_concurrent_rollouts(static_cast<uint32_t>(w.description.max_concurrent));
    info->set_memory_total_bytes(w.description.memory_total_bytes);
    info->set_memory_free_bytes(w.description.memory_free_bytes);
    info->set_metrics_endpoint(w.description.metrics_endpoint);
  }
  return out;
}

// --- workers -------------------------------------------------------------------------------------

absl::StatusOr<std::string> RolloutHub::RegisterWorker(const v1::Register& reg, WorkerLink* link) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  if (!reg.worker_name().empty() && options_.quarantine_after > 0) {
    auto& deaths = deaths_by_name_[reg.worker_name()];
    while (!deaths.empty() && now - deaths.front() > options_.quarantine_window) {
      deaths.pop_front();
    }
    if (static_cast<int>(deaths.size()) >= options_.quarantine_after) {
      const absl::Duration retry = options_.quarantine_window - (now - deaths.front());
      WM_LOG(kWarning, "worker_quarantined") << Kv("name", reg.worker_name())
                                             << Kv("deaths", deaths.size())
                                             << Kv("retry_in_s", absl::ToDoubleSeconds(retry));
      return WithRetryAfter(
          absl::FailedPreconditionError(absl::StrCat(
              "worker ", reg.worker_name(), " is quarantined: it was lost ", deaths.size(),
              " times in ", absl::FormatDuration(options_.quarantine_window))),
          retry);
    }
  }
  scheduler::WorkerDescription d;
  d.name = reg.worker_name();
  d.device = reg.device();
  d.host = reg.host();
  for (const auto& m : reg.models()) d.models.push_back(m.name());
  d.max_concurrent = static_cast<int>(reg.max_concurrent_rollouts());
  d.memory_total_bytes = reg.memory_total_bytes();
  d.memory_free_bytes = reg.memory_free_bytes();
  d.metrics_endpoint = reg.metrics_endpoint();
  d.pid = reg.pid();
  d.ready = reg.state() == v1::WORKER_STATE_READY;
  const std::string id = registry_.Add(d, now);
  links_[id] = link;
  for (const auto& m : d.models) ever_served_.insert(m);
  WM_LOG(kInfo, "worker_state") << Kv("worker", id) << Kv("name", d.name) << Kv("device", d.device)
                                << Kv("pid", reg.pid()) << Kv("models", absl::StrJoin(d.models, ","))
                                << Kv("state", d.ready ? "READY" : "LOADING");
  v1::SchedulerMessage msg;
  msg.mutable_registered()->set_worker_id(id);
  msg.mutable_registered()->set_heartbeat_interval_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.heartbeat_interval)));
  link->Send(std::move(msg));
  if (!accepting_) SendDrainLocked(id);
  DispatchLocked(now);
  UpdateGaugesLocked();
  return id;
}

void RolloutHub::WorkerHeartbeat(const std::string& worker_id, const v1::Heartbeat& hb) {
  absl::MutexLock lock(&mu_);
  const scheduler::WorkerRecord* before = registry_.Find(worker_id);
  if (before == nullptr) return;
  const bool was_ready = before->description.ready;
  const absl::Time now = absl::Now();
  uint64_t weights = 0;
  for (const v1::ModelMemory& m : hb.model_memory()) {
    state_bytes_[m.model()] = m.rollout_state_bytes();
    weights += m.weights_bytes();
    registry_.SetMaxBatch(worker_id, m.model(), static_cast<int>(m.max_batch()));
  }
  if (hb.memory_total_bytes() > 0) {
    // What rollouts may be promised: the device minus the resident weights.
    registry_.SetRolloutMemoryBudget(
        worker_id, hb.memory_total_bytes() > weights ? hb.memory_total_bytes() - weights : 0);
  }
  registry_.Heartbeat(worker_id, hb.state() != v1::WORKER_STATE_LOADING, hb.memory_free_bytes(),
                      now);
  if (!was_ready && registry_.Find(worker_id)->description.ready) {
    WM_LOG(kInfo, "worker_state") << Kv("worker", worker_id) << Kv("state", "READY");
    DispatchLocked(now);
    UpdateGaugesLocked();
  }
}

void RolloutHub::WorkerUpdate(const std::string& worker_id, v1::RolloutUpdate update) {
  absl::MutexLock lock(&mu_);
  Rollout* r = FindLocked(update.rollout_id());
  // Events of rollouts that already ended here, or that moved to another worker, are dropped.
  if (r == nullptr || IsTerminal(r->state) || r->worker_id != worker_id) return;
  v1::RolloutEvent& event = *update.mutable_event();
  const absl::Time now = absl::Now();
  if (event.has_progress()) {
    r->frames_done = std::max(r->frames_done, event.progress().frames_done());
    BroadcastLocked(*r, event);
    return;
  }
  if (event.has_stream_init()) {
    // A resumed rollout's new worker sends the same init segment again; clients have it.
    if (r->init_event) return;
    // The model's own frame count (sana-wm with the refiner drops the conditioning frame).
    if (event.stream_init().frames_total() > 0) {
      r->frames_total = event.stream_init().frames_total();
    }
    r->bytes_sent += event.stream_init().init_segment().size();
    metrics_->bytes_sent.Increment(static_cast<double>(event.stream_init().init_segment().size()));
    r->init_event = std::make_unique<v1::RolloutEvent>(event);
    BroadcastLocked(*r, event);
    return;
  }
  if (!event.has_chunk()) return;
  const v1::VideoChunk& chunk = event.chunk();
  if (chunk.kind() == v1::CHUNK_KIND_PREVIEW) {
    // Live only (rollout.proto ChunkKind): relayed once each (a resumed worker repeats them),
    // never buffered for Attach, not counted as chunks of the video.
    if (chunk.index() < r->previews_sent) return;
    r->previews_sent = chunk.index() + 1;
    BroadcastLocked(*r, event);
    return;
  }
  if (chunk.index() < r->chunks_sent) return;  // delivered before a resume
  if (chunk.index() > r->chunks_sent) {
    EndLocked(*r, absl::InternalError(absl::StrCat("worker ", worker_id, " sent chunk ",
                                                   chunk.index(), ", expected ", r->chunks_sent)),
              "protocol_error");
    return;
  }
  ++r->chunks_sent;
  r->frames_done = std::max(r->frames_done, chunk.first_frame() + chunk.frame_count());
  r->bytes_sent += chunk.data().size();
  v1::ChunkTimings* timings = event.mutable_chunk()->mutable_timings();
  timings->set_queue_s(absl::ToDoubleSeconds(r->started - r->submitted));
  if (chunk.encoded_at_unix_nanos() > 0) {
    timings->set_send_s(std::max(
        0.0, absl::ToDoubleSeconds(now - absl::FromUnixNanos(chunk.encoded_at_unix_nanos()))));
  }
  metrics_->chunks_sent.Increment();
  metrics_->bytes_sent.Increment(static_cast<double>(chunk.data().size()));
  if (r->first_chunk == absl::InfinitePast()) {
    r->first_chunk = now;
    metrics_->time_to_first_chunk.Observe(absl::ToDoubleSeconds(now - r->submitted));
  } else {
    metrics_->inter_chunk.Observe(absl::ToDoubleSeconds(now - r->last_chunk));
  }
  r->last_chunk = now;
  BufferLocked(*r, event);
  BroadcastLocked(*r, event);
}

void RolloutHub::WorkerDone(const std::string& worker_id, const v1::RolloutDone& done) {
  absl::MutexLock lock(&mu_);
  registry_.RemoveRollout(worker_id, done.rollout_id());
  Rollout* r = FindLocked(done.rollout_id());
  if (r != nullptr && !IsTerminal(r->state) && r->worker_id == worker_id) {
    absl::Status status = StatusFromCode(done.status_code(), done.status_message());
    if (status.ok()) {
      auto final_event = std::make_unique<v1::RolloutEvent>();
      *final_event->mutable_final() = done.final();
      final_event->mutable_final()->set_bytes_sent(r->bytes_sent);
      BroadcastLocked(*r, *final_event);
      r->final_event = std::move(final_event);
      if (r->frames_done > 0 && r->started != absl::InfinitePast()) {
        speed_.Observe(r->request.model(), r->frames_done, absl::Now() - r->started);
      }
    }
    EndLocked(*r, status, status.ok() ? "completed" : "worker_error");
  }
  DispatchLocked(absl::Now());
  UpdateGaugesLocked();
}

void RolloutHub::WorkerGone(const std::string& worker_id, WorkerLink* link,
                            const std::string& reason) {
  absl::MutexLock lock(&mu_);
  auto it = links_.find(worker_id);
  if (it == links_.end() || it->second != link) return;
  links_.erase(it);
  MarkDeadLocked(worker_id, reason);
}

// --- housekeeping --------------------------------------------------------------------------------

void RolloutHub::Tick() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (const std::string& id : registry_.Silent(now, options_.heartbeat_timeout)) {
    auto link = links_.find(id);
    if (link != links_.end()) {
      link->second->Close(grpc::Status(grpc::StatusCode::UNAVAILABLE, "missed heartbeats"));
      links_.erase(link);
    }
    MarkDeadLocked(id, absl::StrCat("no heartbeat for ",
                                    absl::FormatDuration(options_.heartbeat_timeout)));
  }
  std::vector<std::pair<std::string, absl::Status>> to_end;
  for (auto& [id, r] : rollouts_) {
    if (IsTerminal(r.state)) continue;
    if (now >= r.deadline) {
      to_end.push_back({id, absl::DeadlineExceededError(absl::StrCat(
                                "rollout deadline passed after ", r.frames_done, " of ",
                                r.frames_total, " frames"))});
    } else if (r.clients.empty() && r.orphaned_since != absl::InfinitePast() &&
               now - r.orphaned_since > r.grace) {
      to_end.push_back({id, absl::CancelledError("no client re-attached within the grace period")});
    } else if (r.state == v1::ROLLOUT_STATE_QUEUED) {
      if (registry_.AnyLiveWorkerServes(r.request.model())) {
        r.no_worker_since = absl::InfinitePast();
      } else if (r.no_worker_since == absl::InfinitePast()) {
        r.no_worker_since = now;
      } else if (now - r.no_worker_since > options_.no_worker_timeout) {
        to_end.push_back({id, WithRetryAfter(absl::UnavailableError(absl::StrCat(
                                                 "no worker serving model ", r.request.model(),
                                                 " for ",
                                                 absl::FormatDuration(options_.no_worker_timeout))),
                                             absl::Seconds(10))});
      }
    }
  }
  for (auto& [id, status] : to_end) {
    const std::string reason = status.code() == absl::StatusCode::kDeadlineExceeded ? "deadline"
                               : status.code() == absl::StatusCode::kCancelled   ? "client_cancel"
                                                                                 : "worker_lost";
    if (Rollout* r = FindLocked(id)) EndLocked(*r, status, reason);
  }
  for (const std::string& id : finished_order_) {
    Rollout* r = FindLocked(id);
    if (r == nullptr || r->buffer.empty()) continue;
    if (now - r->finished > options_.finished_buffer_retention) {
      r->buffer.clear();
      r->buffer_bytes = 0;
      r->init_event.reset();
    }
  }
  registry_.Prune(now, options_.dead_worker_retention);
  ledger_.Prune(now, 1e-3);
  metrics_->send_queue_bytes.Set(static_cast<double>(send_queue_bytes_.load()));
  DispatchLocked(now);
  UpdateGaugesLocked();
}

void RolloutHub::StopAccepting() {
  absl::MutexLock lock(&mu_);
  accepting_ = false;
}

bool RolloutHub::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return active_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void RolloutHub::AbortAll(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  accepting_ = false;
  for (auto& [id, r] : rollouts_) {
    if (!IsTerminal(r.state)) EndLocked(r, absl::UnavailableError(reason), "shutdown");
  }
  for (const auto& [id, link] : links_) SendDrainLocked(id);
  UpdateGaugesLocked();
}

// --- internals -----------------------------------------------------------------------------------

absl::Status RolloutHub::Reject(const std::string& reason, absl::Status status) {
  metrics_->Rejected(reason);
  WM_LOG(kInfo, "rollout_rejected") << Kv("reason", reason) << Kv("status", status.ToString());
  return status;
}

RolloutHub::Rollout* RolloutHub::FindLocked(const std::string& id) {
  auto it = rollouts_.find(id);
  return it == rollouts_.end() ? nullptr : &it->second;
}

std::vector<std::string> RolloutHub::KnownModelsLocked() const {
  std::set<std::string> all(options_.known_models.begin(), options_.known_models.end());
  all.insert(ever_served_.begin(), ever_served_.end());
  return {all.begin(), all.end()};
}

bool RolloutHub::ModelKnownLocked(const std::string& model) const {
  for (const auto& m : options_.known_models) {
    if (m == model) return true;
  }
  return ever_served_.count(model) > 0;
}

int RolloutHub::ServingSlotsLocked(const std::string& model) const {
  int slots = 0;
  for (const auto& [id, w] : registry_.workers()) {
    if (w.state == scheduler::WorkerState::kDead || !w.description.ready) continue;
    const auto& m = w.description.models;
    if (std::find(m.begin(), m.end(), model) != m.end()) slots += w.description.max_concurrent;
  }
  return slots;
}

uint64_t RolloutHub::StateBytesLocked(const std::string& model) const {
  auto it = state_bytes_.find(model);
  return it == state_bytes_.end() ? 0 : it->second;
}

void RolloutHub::BroadcastLocked(Rollout& r, const v1::RolloutEvent& event) {
  std::vector<ClientStream*> too_slow;
  for (const Attached& a : r.clients) {
    if (event.has_chunk() && event.chunk().index() < a.from_chunk) continue;
    if (a.stream->Send(event) > options_.max_client_backlog_bytes) too_slow.push_back(a.stream);
  }
  for (ClientStream* slow : too_slow) {
    // One slow viewer must not hold the others back: cut it off; it can Attach() again.
    slow->Close(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             absl::StrCat("client too slow: more than ",
                                          options_.max_client_backlog_bytes,
                                          " bytes not yet received; Attach() to continue")));
    r.clients.erase(std::remove_if(r.clients.begin(), r.clients.end(),
                                   [&](const Attached& a) { return a.stream == slow; }),
                    r.clients.end());
  }
  if (!too_slow.empty() && r.clients.empty() && !IsTerminal(r.state)) {
    if (r.grace > absl::ZeroDuration()) {
      r.orphaned_since = absl::Now();
    } else {
      EndLocked(r, absl::ResourceExhaustedError("client too slow"), "slow_client");
    }
  }
}

void RolloutHub::BufferLocked(Rollout& r, const v1::RolloutEvent& chunk_event) {
  r.buffer.push_back(chunk_event);
  r.buffer_bytes += chunk_event.chunk().data().size();
  while (r.buffer.size() > 1 && r.buffer_bytes > options_.rollout_buffer_bytes) {
    r.buffer_bytes -= r.buffer.front().chunk().data().size();
    r.buffer.pop_front();
  }
}

// Asks the policy what to start now and applies the plan.
void RolloutHub::DispatchLocked(absl::Time now) {
  if (queue_.size() == 0) return;
  const auto plan = policy_.Schedule(queue_.items(), registry_.SchedulableSlots(), ledger_, now);
  for (const scheduler::Assignment& a : plan) {
    Rollout* r = FindLocked(a.rollout_id);
    auto link = links_.find(a.worker_id);
    if (r == nullptr || link == links_.end()) continue;
    queue_.Remove(a.rollout_id);
    // The registry debits the worker's memory budget by what the rollout was promised, so no
    // later plan can over-commit it.
    registry_.AddRollout(a.worker_id, a.rollout_id, r->queued.state_bytes,
                         r->queued.batch_key);
    // A resumed rollout was charged to its tenant when it first started.
    if (r->resumes == 0) ledger_.Charge(r->queued.tenant, scheduler::ServiceCost(r->queued), now);
    r->state = v1::ROLLOUT_STATE_RUNNING;
    r->worker_id = a.worker_id;
    if (r->started == absl::InfinitePast()) {
      r->started = now;
      metrics_->queue_time.Observe(absl::ToDoubleSeconds(now - r->submitted));
    }
    ++active_running_;
    WM_LOG(kInfo, "rollout_state") << Kv("rollout", r->id) << Kv("state", "RUNNING")
                                   << Kv("worker", a.worker_id) << Kv("resumes", r->resumes)
                                   << Kv("queue_s", absl::ToDoubleSeconds(now - r->submitted));
    v1::SchedulerMessage msg;
    msg.mutable_assign()->set_rollout_id(r->id);
    *msg.mutable_assign()->mutable_request() = r->request;
    msg.mutable_assign()->set_resume_from_chunk(r->chunks_sent);
    link->second->Send(std::move(msg));
  }
}

// Ends a rollout: terminal state, client streams closed, worker told to stop. Idempotent.
void RolloutHub::EndLocked(Rollout& r, const absl::Status& status, const std::string& reason) {
  if (IsTerminal(r.state)) return;
  if (r.state == v1::ROLLOUT_STATE_QUEUED) queue_.Remove(r.id);
  if (r.state == v1::ROLLOUT_STATE_RUNNING) {
    --active_running_;
    auto link = links_.find(r.worker_id);
    if (!status.ok() && link != links_.end()) {
      // The worker frees the slot when it reports RolloutDone.
      v1::SchedulerMessage msg;
      msg.mutable_cancel()->set_rollout_id(r.id);
      msg.mutable_cancel()->set_reason(std::string(status.message()));
      link->second->Send(std::move(msg));
    }
  }
  r.finished = absl::Now();
  r.end_status = status;
  const char* outcome = "succeeded";
  if (status.ok()) {
    r.state = v1::ROLLOUT_STATE_SUCCEEDED;
  } else if (status.code() == absl::StatusCode::kCancelled) {
    r.state = v1::ROLLOUT_STATE_CANCELLED;
    outcome = "cancelled";
  } else {
    r.state = v1::ROLLOUT_STATE_FAILED;
    outcome = "failed";
  }
  metrics_->RolloutEnded(outcome, status.ok() ? "completed" : reason);
  metrics_->rollout_duration.Observe(absl::ToDoubleSeconds(r.finished - r.submitted));
  if (status.ok() && r.started != absl::InfinitePast() && r.frames_done > 0 &&
      r.request.fps() > 0) {
    const double video_s = r.frames_done / r.request.fps();
    metrics_->realtime_factor.Observe(absl::ToDoubleSeconds(r.finished - r.started) / video_s);
  }
  log::Line(status.ok() ? log::Level::kInfo : log::Level::kWarning, "rollout_state")
      << Kv("rollout", r.id) << Kv("state", v1::RolloutState_Name(r.state))
      << Kv("reason", reason) << Kv("status", status.ToString()) << Kv("chunks", r.chunks_sent)
      << Kv("frames", r.frames_done) << Kv("resumes", r.resumes)
      << Kv("seconds", absl::ToDoubleSeconds(r.finished - r.submitted));
  const grpc::Status end = ToGrpcStatus(status);
  for (const Attached& a : r.clients) a.stream->Close(end);
  r.clients.clear();
  // Keep only what GetRollout reports. A failed or cancelled rollout cannot be continued, so its
  // chunk buffer goes now; a finished one keeps it briefly for clients that re-attach to fetch
  // the last chunks (Tick drops it after finished_buffer_retention).
  r.request.clear_image();
  r.request.clear_trajectory();
  if (!status.ok()) {
    r.buffer.clear();
    r.buffer_bytes = 0;
    r.init_event.reset();
  }
  finished_order_.push_back(r.id);
  while (finished_order_.size() > options_.finished_rollouts_retained) {
    auto old = rollouts_.find(finished_order_.front());
    if (old != rollouts_.end() && !old->second.dedupe_key.empty()) {
      by_dedupe_key_.erase(old->second.dedupe_key);
    }
    if (old != rollouts_.end()) rollouts_.erase(old);
    finished_order_.pop_front();
  }
  UpdateGaugesLocked();
}

// A rollout's worker died: continue it elsewhere with the same request and seed, or fail it.
void RolloutHub::ResumeOrFailLocked(Rollout& r, const std::string& worker_id,
                                    const std::string& reason) {
  if (static_cast<int>(r.resumes) >= options_.max_resumes || !accepting_) {
    EndLocked(r,
              WithRetryAfter(absl::UnavailableError(absl::StrCat(
                                 "worker ", worker_id, " lost (", reason,
                                 "); rollout did not complete after ", r.resumes, " resumes")),
                             absl::Seconds(1)),
              "worker_lost");
    return;
  }
  --active_running_;
  ++r.resumes;
  r.state = v1::ROLLOUT_STATE_QUEUED;
  r.worker_id.clear();
  queue_.PushFront(r.queued);
  metrics_->resumes.Increment();
  WM_LOG(kWarning, "rollout_resumed") << Kv("rollout", r.id) << Kv("lost_worker", worker_id)
                                      << Kv("reason", reason) << Kv("from_chunk", r.chunks_sent)
                                      << Kv("resumes", r.resumes);
}

void RolloutHub::MarkDeadLocked(const std::string& worker_id, const std::string& reason) {
  const absl::Time now = absl::Now();
  if (const scheduler::WorkerRecord* w = registry_.Find(worker_id);
      w != nullptr && accepting_ && !w->description.name.empty()) {
    deaths_by_name_[w->description.name].push_back(now);
  }
  const std::set<std::string> orphans = registry_.MarkDead(worker_id, reason, now);
  WM_LOG(kWarning, "worker_state") << Kv("worker", worker_id) << Kv("state", "DEAD")
                                   << Kv("reason", reason) << Kv("orphaned", orphans.size());
  for (const std::string& id : orphans) {
    Rollout* r = FindLocked(id);
    if (r != nullptr && !IsTerminal(r->state)) ResumeOrFailLocked(*r, worker_id, reason);
  }
  DispatchLocked(now);
  UpdateGaugesLocked();
}

void RolloutHub::SendDrainLocked(const std::string& worker_id) {
  auto link = links_.find(worker_id);
  if (link == links_.end()) return;
  v1::SchedulerMessage msg;
  msg.mutable_drain();
  link->second->Send(std::move(msg));
}

void RolloutHub::UpdateGaugesLocked() {
  active_ = queue_.size() + static_cast<size_t>(std::max(0, active_running_));
  std::array<int, scheduler::kNumPriorities> waiting{};
  for (const auto& q : queue_.items()) ++waiting[scheduler::PriorityIndex(q.priority)];
  for (auto p : {scheduler::Priority::kHigh, scheduler::Priority::kNormal,
                 scheduler::Priority::kLow}) {
    metrics_->SetWaiting(scheduler::PriorityName(p), waiting[scheduler::PriorityIndex(p)]);
  }
  metrics_->running.Set(active_running_);
  std::map<std::string, int> by_state;
  for (const char* s : {"LOADING", "READY", "BUSY", "DRAINING", "DEAD"}) by_state[s] = 0;
  for (const auto& [id, w] : registry_.workers()) ++by_state[WorkerStateName(w.state)];
  for (const auto& [state, n] : by_state) metrics_->SetWorkers(state, n);
  WriteFileSdLocked();
}

// Prometheus file_sd: the live workers' /metrics endpoints, rewritten (atomically, by rename)
// whenever the set changes.
void RolloutHub::WriteFileSdLocked() {
  if (options_.file_sd_path.empty()) return;
  std::string json = "[";
  for (const auto& [id, w] : registry_.workers()) {
    if (w.state == scheduler::WorkerState::kDead || w.description.metrics_endpoint.empty()) {
      continue;
    }
    if (json.size() > 1) json += ",";
    absl::StrAppend(&json, "\n  {\"targets\": [\"", w.description.metrics_endpoint,
                    "\"], \"labels\": {\"worker_id\": \"", id, "\", \"worker_name\": \"",
                    JsonEscape(w.description.name), "\", \"device\": \"",
                    JsonEscape(w.description.device), "\"}}");
  }
  json += "\n]\n";
  if (json == file_sd_written_) return;
  const std::string tmp = options_.file_sd_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << json;
    if (!out) {
      WM_LOG(kWarning, "file_sd_write_failed") << Kv("path", tmp);
      return;
    }
  }
  if (std::rename(tmp.c_str(), options_.file_sd_path.c_str()) == 0) file_sd_written_ = json;
}

}  // namespace wmserve::server
