#include "server/scheduler_server.h"

#include <atomic>
#include <cstdio>
#include <deque>
#include <fstream>
#include <list>
#include <map>
#include <set>
#include <random>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "scheduler/queue_policy.h"
#include "scheduler/worker_registry.h"
#include "server/logging.h"
#include "server/status_util.h"
#include "worker/media/image_io.h"

namespace wmserve::server {

using log::Kv;

// ---------------------------------------------------------------------------------------------
// Interfaces the hub uses to talk to the reactors (implemented below).
// ---------------------------------------------------------------------------------------------

// The client end of one Rollout RPC.
class ClientStream {
 public:
  virtual ~ClientStream() = default;
  // Queues an event for the client. Returns the bytes now waiting to be written.
  virtual size_t Send(v1::RolloutEvent event) = 0;
  // Finishes the RPC with `status` once queued events are written (at once if cancelled).
  virtual void Close(const grpc::Status& status) = 0;
};

// The scheduler end of one worker's Connect stream.
class WorkerLink {
 public:
  virtual ~WorkerLink() = default;
  virtual void Send(v1::SchedulerMessage message) = 0;
  // Ends the stream (the worker sees `status` and reconnects).
  virtual void Close(const grpc::Status& status) = 0;
};

namespace {

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

std::string JsonEscape(const std::string& in) {
  std::string out;
  for (char c : in) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

bool IsTerminal(v1::RolloutState s) {
  return s == v1::ROLLOUT_STATE_SUCCEEDED || s == v1::ROLLOUT_STATE_CANCELLED ||
         s == v1::ROLLOUT_STATE_FAILED;
}

std::string NewRolloutPrefix() {
  std::random_device rd;
  return absl::StrFormat("r-%08x", rd());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RolloutHub: all rollout and worker state, one mutex.
// ---------------------------------------------------------------------------------------------

class RolloutHub {
 public:
  RolloutHub(const SchedulerOptions& options, metrics::SchedulerMetrics* metrics)
      : options_(options), metrics_(metrics), queue_(options.max_queue),
        id_prefix_(NewRolloutPrefix()) {}

  // --- client side ----------------------------------------------------------------------------

  // Admits a validated request. On success the hub owns the rollout and will Send()/Close() on
  // `client` until DetachClient(). On error nothing was queued.
  absl::StatusOr<v1::Accepted> Submit(v1::RolloutRequest request, ClientStream* client)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (!accepting_) return Reject("shutdown", absl::UnavailableError("scheduler is shutting down"));
    if (!ModelKnownLocked(request.model())) {
      return Reject("unknown_model",
                    absl::NotFoundError(absl::StrCat("model \"", request.model(),
                                                     "\" is not served here (available: ",
                                                     absl::StrJoin(KnownModelsLocked(), ", "),
                                                     ")")));
    }
    const std::string id = absl::StrCat(id_prefix_, "-", ++rollout_counter_);
    scheduler::QueuedRollout queued{id, request.model(), now, 0, ""};
    if (absl::Status s = queue_.Push(queued); !s.ok()) return Reject("queue_full", s);

    Rollout& r = rollouts_[id];
    r.id = id;
    r.client = client;
    r.submitted = now;
    r.frames_total = request.num_frames();
    r.request = std::move(request);
    r.state = v1::ROLLOUT_STATE_QUEUED;
    v1::Accepted accepted;
    accepted.set_rollout_id(id);
    accepted.set_queue_position(static_cast<uint32_t>(queue_.PositionOf(id)));
    WM_LOG(kInfo, "rollout_state") << Kv("rollout", id) << Kv("state", "QUEUED")
                                   << Kv("model", r.request.model())
                                   << Kv("frames", r.frames_total)
                                   << Kv("client_request_id", r.request.client_request_id())
                                   << Kv("queue_position", accepted.queue_position());
    // The Accepted event goes out before anything a dispatch could send.
    v1::RolloutEvent event;
    *event.mutable_accepted() = accepted;
    client->Send(std::move(event));
    DispatchLocked(now);
    UpdateGaugesLocked();
    return accepted;
  }

  // The client cancelled or disconnected: end the rollout unless already ended.
  void ClientCancelled(const std::string& id, ClientStream* client) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    Rollout* r = FindLocked(id);
    if (r == nullptr || r->client != client) return;
    EndLocked(*r, absl::CancelledError("rollout cancelled: client cancelled or disconnected"),
              "client_cancel");
  }

  // The reactor is going away; never touch `client` again.
  void DetachClient(const std::string& id, ClientStream* client) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    Rollout* r = FindLocked(id);
    if (r != nullptr && r->client == client) r->client = nullptr;
  }

  absl::StatusOr<v1::RolloutState> Cancel(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    Rollout* r = FindLocked(id);
    if (r == nullptr) return absl::NotFoundError(absl::StrCat("rollout \"", id, "\" not found"));
    if (!IsTerminal(r->state)) {
      EndLocked(*r, absl::CancelledError("rollout cancelled by Cancel RPC"), "cancel_rpc");
    }
    return r->state;
  }

  absl::StatusOr<v1::RolloutStatus> Get(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_) {
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

  v1::ListWorkersResponse ListWorkers() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    v1::ListWorkersResponse out;
    for (const auto& [id, w] : registry_.workers()) {
      v1::WorkerInfo* info = out.add_workers();
      info->set_worker_id(id);
      info->set_device(w.description.device);
      info->set_host(w.description.host);
      for (const auto& m : w.description.models) info->add_models(m);
      info->set_state(ToProto(w.state));
      info->set_running_rollouts(static_cast<uint32_t>(w.running.size()));
      info->set_max_concurrent_rollouts(static_cast<uint32_t>(w.description.max_concurrent));
      info->set_memory_total_bytes(w.description.memory_total_bytes);
      info->set_memory_free_bytes(w.description.memory_free_bytes);
      info->set_metrics_endpoint(w.description.metrics_endpoint);
      info->set_pid(w.description.pid);
      info->set_name(w.description.name);
    }
    return out;
  }

  // --- worker side ----------------------------------------------------------------------------

  std::string RegisterWorker(const v1::Register& reg, WorkerLink* link) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
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
    const absl::Time now = absl::Now();
    const std::string id = registry_.Add(d, now);
    links_[id] = link;
    for (const auto& m : d.models) ever_served_.insert(m);
    WM_LOG(kInfo, "worker_state") << Kv("worker", id) << Kv("name", d.name)
                                  << Kv("device", d.device) << Kv("pid", reg.pid())
                                  << Kv("models", absl::StrJoin(d.models, ","))
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

  void WorkerHeartbeat(const std::string& worker_id, const v1::Heartbeat& hb)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const scheduler::WorkerRecord* before = registry_.Find(worker_id);
    if (before == nullptr) return;
    const bool was_ready = before->description.ready;
    const absl::Time now = absl::Now();
    registry_.Heartbeat(worker_id, hb.state() != v1::WORKER_STATE_LOADING, hb.memory_free_bytes(),
                        now);
    if (!was_ready && registry_.Find(worker_id)->description.ready) {
      WM_LOG(kInfo, "worker_state") << Kv("worker", worker_id) << Kv("state", "READY");
      DispatchLocked(now);
      UpdateGaugesLocked();
    }
  }

  void WorkerUpdate(const std::string& worker_id, v1::RolloutUpdate update)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    Rollout* r = FindLocked(update.rollout_id());
    // Events of rollouts that already ended here (cancelled, failed over) are dropped.
    if (r == nullptr || IsTerminal(r->state) || r->worker_id != worker_id) return;
    v1::RolloutEvent& event = *update.mutable_event();
    if (event.has_progress()) {
      r->frames_done = std::max(r->frames_done, event.progress().frames_done());
    } else if (event.has_chunk()) {
      const v1::VideoChunk& chunk = event.chunk();
      if (chunk.index() != r->chunks_sent) {
        EndLocked(*r, absl::InternalError(absl::StrCat("worker ", worker_id, " sent chunk ",
                                                       chunk.index(), ", expected ",
                                                       r->chunks_sent)),
                  "protocol_error");
        return;
      }
      ++r->chunks_sent;
      r->frames_done = std::max(r->frames_done, chunk.first_frame() + chunk.frame_count());
      const absl::Time now = absl::Now();
      v1::ChunkTimings* timings = event.mutable_chunk()->mutable_timings();
      timings->set_queue_s(absl::ToDoubleSeconds(r->started - r->submitted));
      if (chunk.encoded_at_unix_nanos() > 0) {
        timings->set_send_s(std::max(
            0.0, absl::ToDoubleSeconds(now - absl::FromUnixNanos(chunk.encoded_at_unix_nanos()))));
      }
      if (r->last_chunk != absl::InfinitePast()) {
        metrics_->inter_chunk.Observe(absl::ToDoubleSeconds(now - r->last_chunk));
      }
      r->last_chunk = now;
      r->bytes_sent += chunk.data().size();
      metrics_->chunks_sent.Increment();
      metrics_->bytes_sent.Increment(static_cast<double>(chunk.data().size()));
      if (r->first_chunk == absl::InfinitePast()) {
        r->first_chunk = now;
        metrics_->time_to_first_chunk.Observe(absl::ToDoubleSeconds(r->first_chunk - r->submitted));
      }
    } else if (event.has_stream_init()) {
      r->bytes_sent += event.stream_init().init_segment().size();
      metrics_->bytes_sent.Increment(static_cast<double>(event.stream_init().init_segment().size()));
    }
    if (r->client == nullptr) return;
    const size_t backlog = r->client->Send(std::move(event));
    if (backlog > options_.max_client_backlog_bytes) {
      EndLocked(*r, absl::ResourceExhaustedError(absl::StrCat(
                        "client too slow: ", backlog, " bytes not yet received (limit ",
                        options_.max_client_backlog_bytes, ")")),
                "slow_client");
    }
  }

  void WorkerDone(const std::string& worker_id, const v1::RolloutDone& done)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    registry_.RemoveRollout(worker_id, done.rollout_id());
    Rollout* r = FindLocked(done.rollout_id());
    if (r != nullptr && !IsTerminal(r->state) && r->worker_id == worker_id) {
      absl::Status status = StatusFromCode(done.status_code(), done.status_message());
      if (status.ok() && r->client != nullptr) {
        v1::RolloutEvent event;
        *event.mutable_final() = done.final();
        event.mutable_final()->set_bytes_sent(r->bytes_sent);
        r->client->Send(std::move(event));
      }
      EndLocked(*r, status, status.ok() ? "" : "worker_error");
    }
    DispatchLocked(absl::Now());
    UpdateGaugesLocked();
  }

  // The worker's stream ended (crash, kill, network): fail what it was running.
  void WorkerGone(const std::string& worker_id, WorkerLink* link, const std::string& reason)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = links_.find(worker_id);
    if (it == links_.end() || it->second != link) return;
    links_.erase(it);
    MarkDeadLocked(worker_id, reason);
  }

  // --- accounting shared with the reactors ---------------------------------------------------

  void CountInvalidRequest() { metrics_->Rejected("invalid_argument"); }
  // Bytes queued in all client streams; reactors add and subtract, Tick() publishes.
  std::atomic<int64_t>& send_queue_bytes() { return send_queue_bytes_; }

  // --- housekeeping -------------------------------------------------------------------------

  void Tick() ABSL_LOCKS_EXCLUDED(mu_) {
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
    registry_.Prune(now, options_.dead_worker_retention);
    metrics_->send_queue_bytes.Set(static_cast<double>(send_queue_bytes_.load()));
    UpdateGaugesLocked();
  }

  void StopAccepting() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    accepting_ = false;
  }

  bool WaitIdle(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return active_ == 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
  }

  void AbortAll(const std::string& reason) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    accepting_ = false;
    for (auto& [id, r] : rollouts_) {
      if (!IsTerminal(r.state)) EndLocked(r, absl::UnavailableError(reason), "shutdown");
    }
    for (const auto& [id, link] : links_) SendDrainLocked(id);
    UpdateGaugesLocked();
  }

 private:
  struct Rollout {
    std::string id;
    v1::RolloutRequest request;
    v1::RolloutState state = v1::ROLLOUT_STATE_QUEUED;
    ClientStream* client = nullptr;  // not owned; the reactor detaches before it is deleted
    std::string worker_id;
    absl::Time submitted = absl::InfinitePast();
    absl::Time started = absl::InfinitePast();
    absl::Time first_chunk = absl::InfinitePast();
    absl::Time last_chunk = absl::InfinitePast();
    absl::Time finished = absl::InfinitePast();
    uint32_t frames_done = 0;
    uint32_t frames_total = 0;
    uint32_t chunks_sent = 0;
    uint64_t bytes_sent = 0;
    absl::Status end_status;
  };

  absl::Status Reject(const std::string& reason, absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    metrics_->Rejected(reason);
    WM_LOG(kInfo, "rollout_rejected") << Kv("reason", reason) << Kv("status", status.ToString());
    return status;
  }

  Rollout* FindLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = rollouts_.find(id);
    return it == rollouts_.end() ? nullptr : &it->second;
  }

  std::vector<std::string> KnownModelsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::set<std::string> all(options_.known_models.begin(), options_.known_models.end());
    for (const auto& [id, w] : registry_.workers()) {
      if (w.state != scheduler::WorkerState::kDead) all.insert(w.description.models.begin(),
                                                               w.description.models.end());
    }
    return {all.begin(), all.end()};
  }

  bool ModelKnownLocked(const std::string& model) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const auto& m : options_.known_models) {
      if (m == model) return true;
    }
    return registry_.AnyLiveWorkerServes(model) || ever_served_.count(model) > 0;
  }

  // Asks the policy what to start now and applies the plan.
  void DispatchLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (queue_.size() == 0) return;
    const auto plan = policy_.Schedule(queue_.items(), registry_.SchedulableSlots(), now);
    for (const scheduler::Assignment& a : plan) {
      Rollout* r = FindLocked(a.rollout_id);
      auto link = links_.find(a.worker_id);
      if (r == nullptr || link == links_.end()) continue;
      queue_.Remove(a.rollout_id);
      registry_.AddRollout(a.worker_id, a.rollout_id);
      r->state = v1::ROLLOUT_STATE_RUNNING;
      r->worker_id = a.worker_id;
      r->started = now;
      ++active_running_;
      metrics_->queue_time.Observe(absl::ToDoubleSeconds(now - r->submitted));
      WM_LOG(kInfo, "rollout_state") << Kv("rollout", r->id) << Kv("state", "RUNNING")
                                     << Kv("worker", a.worker_id)
                                     << Kv("queue_s", absl::ToDoubleSeconds(now - r->submitted));
      v1::SchedulerMessage msg;
      msg.mutable_assign()->set_rollout_id(r->id);
      *msg.mutable_assign()->mutable_request() = r->request;
      link->second->Send(std::move(msg));
      // The worker has its copy; the image is the bulk of the request and is not needed here.
      r->request.clear_image();
    }
  }

  // Ends a rollout: terminal state, client stream closed, worker told to stop. Idempotent.
  void EndLocked(Rollout& r, const absl::Status& status, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (IsTerminal(r.state)) return;
    const bool was_running = r.state == v1::ROLLOUT_STATE_RUNNING;
    if (r.state == v1::ROLLOUT_STATE_QUEUED) queue_.Remove(r.id);
    if (was_running) {
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
    if (status.ok() && r.started != absl::InfinitePast() && r.frames_done > 0 &&
        r.request.fps() > 0) {
      const double video_s = r.frames_done / r.request.fps();
      metrics_->realtime_factor.Observe(absl::ToDoubleSeconds(r.finished - r.started) / video_s);
    }
    metrics_->rollout_duration.Observe(absl::ToDoubleSeconds(r.finished - r.submitted));
    log::Line(status.ok() ? log::Level::kInfo : log::Level::kWarning, "rollout_state")
        << Kv("rollout", r.id) << Kv("state", v1::RolloutState_Name(r.state))
        << Kv("reason", reason) << Kv("status", status.ToString())
        << Kv("chunks", r.chunks_sent) << Kv("frames", r.frames_done)
        << Kv("seconds", absl::ToDoubleSeconds(r.finished - r.submitted));
    if (r.client != nullptr) {
      r.client->Close(ToGrpcStatus(status));
      r.client = nullptr;
    }
    r.request.clear_image();
    finished_order_.push_back(r.id);
    while (finished_order_.size() > options_.finished_rollouts_retained) {
      rollouts_.erase(finished_order_.front());
      finished_order_.pop_front();
    }
    UpdateGaugesLocked();
  }

  void MarkDeadLocked(const std::string& worker_id, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = absl::Now();
    const std::set<std::string> orphans = registry_.MarkDead(worker_id, reason, now);
    WM_LOG(kWarning, "worker_state") << Kv("worker", worker_id) << Kv("state", "DEAD")
                                     << Kv("reason", reason) << Kv("orphaned", orphans.size());
    for (const std::string& id : orphans) {
      Rollout* r = FindLocked(id);
      if (r == nullptr) continue;
      EndLocked(*r, absl::UnavailableError(absl::StrCat("worker ", worker_id, " lost (", reason,
                                                        "); rollout did not complete")),
                "worker_lost");
    }
    DispatchLocked(now);
    UpdateGaugesLocked();
  }

  void SendDrainLocked(const std::string& worker_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto link = links_.find(worker_id);
    if (link == links_.end()) return;
    v1::SchedulerMessage msg;
    msg.mutable_drain();
    link->second->Send(std::move(msg));
  }

  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    active_ = queue_.size() + static_cast<size_t>(active_running_);
    metrics_->SetWaiting("default", static_cast<double>(queue_.size()));
    metrics_->running.Set(active_running_);
    std::map<std::string, int> by_state;
    for (const char* s : {"LOADING", "READY", "BUSY", "DRAINING", "DEAD"}) by_state[s] = 0;
    for (const auto& [id, w] : registry_.workers()) ++by_state[WorkerStateName(w.state)];
    for (const auto& [state, n] : by_state) metrics_->SetWorkers(state, n);
    WriteFileSdLocked();
  }

  // Prometheus file_sd: the live workers' /metrics endpoints, rewritten (atomically, by rename)
  // whenever the set changes.
  void WriteFileSdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
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

  const SchedulerOptions options_;
  metrics::SchedulerMetrics* const metrics_;
  const scheduler::FifoPolicy policy_;

  absl::Mutex mu_;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  scheduler::RolloutQueue queue_ ABSL_GUARDED_BY(mu_);
  scheduler::WorkerRegistry registry_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerLink*> links_ ABSL_GUARDED_BY(mu_);  // live streams only
  std::set<std::string> ever_served_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Rollout> rollouts_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> finished_order_ ABSL_GUARDED_BY(mu_);
  uint64_t rollout_counter_ ABSL_GUARDED_BY(mu_) = 0;
  int active_running_ ABSL_GUARDED_BY(mu_) = 0;
  size_t active_ ABSL_GUARDED_BY(mu_) = 0;
  const std::string id_prefix_;
  std::string file_sd_written_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> send_queue_bytes_{0};
};

// ---------------------------------------------------------------------------------------------
// Rollout RPC reactor: one per client stream.
// ---------------------------------------------------------------------------------------------

class RolloutReactor : public grpc::ServerWriteReactor<v1::RolloutEvent>, public ClientStream {
 public:
  RolloutReactor(RolloutHub* hub, const SchedulerOptions& options,
                 const v1::RolloutRequest* request)
      : hub_(hub) {
    absl::Status valid = ValidateRolloutRequest(*request, options.limits);
    if (valid.ok()) valid = media::DecodeImage(request->image()).status();
    if (!valid.ok()) {
      hub_->CountInvalidRequest();
      WM_LOG(kInfo, "rollout_rejected") << Kv("reason", "invalid_argument")
                                        << Kv("status", valid.ToString());
      Finish(ToGrpcStatus(valid));
      return;
    }
    // Submit may call Send()/Close() on this reactor before it returns.
    auto accepted = hub_->Submit(*request, this);
    if (!accepted.ok()) {
      Finish(ToGrpcStatus(accepted.status()));
      return;
    }
    absl::MutexLock lock(&mu_);
    rollout_id_ = accepted->rollout_id();
  }

  size_t Send(v1::RolloutEvent event) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_ || cancelled_) return 0;
    AdjustBacklogLocked(static_cast<int64_t>(event.ByteSizeLong()));
    pending_.push_back(std::move(event));
    MaybeWriteLocked();
    return backlog_bytes_;
  }

  void Close(const grpc::Status& status) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finish_status_ = status;
    close_requested_ = true;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      // The client is gone; OnCancel follows and ends the rollout.
      pending_.clear();
      AdjustBacklogLocked(-static_cast<int64_t>(backlog_bytes_));
    } else {
      AdjustBacklogLocked(-static_cast<int64_t>(std::min(backlog_bytes_, in_flight_bytes_)));
      pending_.pop_front();
    }
    in_flight_bytes_ = 0;
    MaybeWriteLocked();
  }

  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      id = rollout_id_;
    }
    if (!id.empty()) hub_->ClientCancelled(id, this);
    // If the hub had already closed us, Close() will not come again: finish here.
    absl::MutexLock lock(&mu_);
    if (!finishing_ && (close_requested_ || id.empty())) {
      // Unwritten events are dropped by MaybeWriteLocked once no write is in flight.
      if (!close_requested_) finish_status_ = grpc::Status::CANCELLED;
      close_requested_ = true;
      MaybeWriteLocked();
    }
  }

  void OnDone() override {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      id = rollout_id_;
    }
    if (!id.empty()) hub_->DetachClient(id, this);
    {
      absl::MutexLock lock(&mu_);
      AdjustBacklogLocked(-static_cast<int64_t>(backlog_bytes_));
    }
    delete this;
  }

 private:
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finishing_) return;
    // Never clear while a write is in flight: StartWrite holds a pointer to pending_.front().
    if (cancelled_ && !pending_.empty()) {
      pending_.clear();
      AdjustBacklogLocked(-static_cast<int64_t>(backlog_bytes_));
    }
    if (!pending_.empty()) {
      writing_ = true;
      in_flight_bytes_ = pending_.front().ByteSizeLong();
      StartWrite(&pending_.front());
      return;
    }
    if (close_requested_) {
      finishing_ = true;
      Finish(finish_status_);
    }
  }

  void AdjustBacklogLocked(int64_t delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    backlog_bytes_ = static_cast<size_t>(static_cast<int64_t>(backlog_bytes_) + delta);
    hub_->send_queue_bytes().fetch_add(delta);
  }

  RolloutHub* const hub_;
  absl::Mutex mu_;
  std::string rollout_id_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::RolloutEvent> pending_ ABSL_GUARDED_BY(mu_);  // front() is being written
  size_t backlog_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t in_flight_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool close_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------------------------
// Worker Connect reactor: one per worker stream.
// ---------------------------------------------------------------------------------------------

class WorkerReactor : public grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage>,
                      public WorkerLink {
 public:
  WorkerReactor(RolloutHub* hub, std::string peer) : hub_(hub), peer_(std::move(peer)) {
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Gone("stream closed");
      return;
    }
    if (worker_id_.empty()) {
      if (!incoming_.has_register_()) {
        Close(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                           "first message on WorkerGateway.Connect must be Register"));
        return;
      }
      // RegisterWorker sends Registered through this link before returning.
      worker_id_ = hub_->RegisterWorker(incoming_.register_(), this);
    } else {
      switch (incoming_.msg_case()) {
        case v1::WorkerMessage::kHeartbeat:
          hub_->WorkerHeartbeat(worker_id_, incoming_.heartbeat());
          break;
        case v1::WorkerMessage::kUpdate:
          hub_->WorkerUpdate(worker_id_, std::move(*incoming_.mutable_update()));
          break;
        case v1::WorkerMessage::kDone:
          hub_->WorkerDone(worker_id_, incoming_.done());
          break;
        default:
          break;
      }
    }
    incoming_.Clear();
    StartRead(&incoming_);
  }

  void Send(v1::SchedulerMessage message) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    pending_.push_back(std::move(message));
    MaybeWriteLocked();
  }

  void Close(const grpc::Status& status) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finishing_ = true;
    Finish(status);
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      pending_.clear();
      return;
    }
    pending_.pop_front();
    MaybeWriteLocked();
  }

  void OnDone() override {
    if (!worker_id_.empty()) hub_->WorkerGone(worker_id_, this, "stream closed");
    delete this;
  }

 private:
  void Gone(const std::string& reason) {
    if (!worker_id_.empty()) hub_->WorkerGone(worker_id_, this, reason);
    Close(grpc::Status::OK);
  }

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finishing_ || pending_.empty()) return;
    writing_ = true;
    StartWrite(&pending_.front());
  }

  RolloutHub* const hub_;
  const std::string peer_;
  v1::WorkerMessage incoming_;  // only touched by the read chain
  std::string worker_id_;       // set by the first read; read chain and OnDone only
  absl::Mutex mu_;
  std::deque<v1::SchedulerMessage> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------------

namespace {

class RolloutServiceImpl : public v1::RolloutService::CallbackService {
 public:
  RolloutServiceImpl(RolloutHub* hub, const SchedulerOptions& options)
      : hub_(hub), options_(options) {}

  grpc::ServerWriteReactor<v1::RolloutEvent>* Rollout(grpc::CallbackServerContext*,
                                                      const v1::RolloutRequest* request) override {
    return new RolloutReactor(hub_, options_, request);
  }

  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx, const v1::CancelRequest* req,
                                   v1::CancelResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    auto state = hub_->Cancel(req->rollout_id());
    if (state.ok()) resp->set_state(*state);
    reactor->Finish(ToGrpcStatus(state.status()));
    return reactor;
  }

  grpc::ServerUnaryReactor* GetRollout(grpc::CallbackServerContext* ctx,
                                       const v1::GetRolloutRequest* req,
                                       v1::RolloutStatus* resp) override {
    auto* reactor = ctx->DefaultReactor();
    auto status = hub_->Get(req->rollout_id());
    if (status.ok()) *resp = *std::move(status);
    reactor->Finish(ToGrpcStatus(status.status()));
    return reactor;
  }

  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx,
                                        const v1::ListWorkersRequest*,
                                        v1::ListWorkersResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    *resp = hub_->ListWorkers();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  RolloutHub* const hub_;
  const SchedulerOptions options_;
};

class WorkerGatewayImpl : public v1::WorkerGateway::CallbackService {
 public:
  explicit WorkerGatewayImpl(RolloutHub* hub) : hub_(hub) {}
  grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage>* Connect(
      grpc::CallbackServerContext* ctx) override {
    return new WorkerReactor(hub_, ctx->peer());
  }

 private:
  RolloutHub* const hub_;
};

}  // namespace

SchedulerServer::SchedulerServer(const SchedulerOptions& options,
                                 metrics::SchedulerMetrics* metrics)
    : hub_(std::make_unique<RolloutHub>(options, metrics)),
      rollout_service_(std::make_unique<RolloutServiceImpl>(hub_.get(), options)),
      worker_gateway_(std::make_unique<WorkerGatewayImpl>(hub_.get())) {}

SchedulerServer::~SchedulerServer() = default;

grpc::Service* SchedulerServer::rollout_service() { return rollout_service_.get(); }
grpc::Service* SchedulerServer::worker_gateway() { return worker_gateway_.get(); }
void SchedulerServer::Tick() { hub_->Tick(); }
void SchedulerServer::StopAccepting() { hub_->StopAccepting(); }
bool SchedulerServer::WaitIdle(absl::Duration timeout) { return hub_->WaitIdle(timeout); }
void SchedulerServer::AbortAll(const std::string& reason) { hub_->AbortAll(reason); }

}  // namespace wmserve::server
