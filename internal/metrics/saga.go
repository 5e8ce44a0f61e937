package metrics

import "github.com/prometheus/client_golang/prometheus"

// Saga are the saga engine's metrics. Every one has the service label (the sidecar's
// --service-name).
type Saga struct {
	// Started counts sagas started (service, workflow).
	Started *prometheus.CounterVec
	// Completed counts sagas ended, by final state (service, workflow, state).
	Completed *prometheus.CounterVec
	// StepDuration is how long answered attempts ran: from the worker taking the task
	// to its answer (service, action: the step's action or compensation).
	StepDuration *prometheus.HistogramVec
	// TasksPending is the tasks ready and waiting for a worker, per action (service,
	// action), in the whole database.
	TasksPending *prometheus.GaugeVec
	// Dispatch is the time from a task becoming ready to its being sent to a worker
	// (service).
	Dispatch *prometheus.HistogramVec
}

// NewSaga registers the saga metrics on reg.
func NewSaga(reg prometheus.Registerer) *Saga {
	m := &Saga{
		Started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "saga_started_total",
			Help: "Sagas started (StartSaga calls that created one).",
		}, []string{"service", "workflow"}),
		Completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "saga_completed_total",
			Help: "Sagas ended, by final state (COMPLETED, COMPENSATED, FAILED, CANCELLED).",
		}, []string{"service", "workflow", "state"}),
		StepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "saga_step_duration_seconds",
			Help:    "Time from a worker taking a saga task to its answer, per action or compensation.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"service", "action"}),
		TasksPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "saga_tasks_pending",
			Help: "Saga tasks ready and waiting for a worker (or a retry), per action, in the whole database.",
		}, []string{"service", "action"}),
		Dispatch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "saga_task_dispatch_seconds",
			Help:    "Time from a saga task becoming ready to its being sent to a worker.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 5},
		}, []string{"service"}),
	}
	reg.MustRegister(m.Started, m.Completed, m.StepDuration, m.TasksPending, m.Dispatch)
	return m
}
