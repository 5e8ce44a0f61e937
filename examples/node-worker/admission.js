// A saga worker in Node.js: the guide's patient-admission workflow run through the
// eventgw sidecar with nothing but gRPC stubs (@grpc/grpc-js, @grpc/proto-loader).
//
//   npm ci && node admission.js [--addr 127.0.0.1:50051] [--tenant <uuid>]
//
// It registers the workflow, polls the tasks of its actions and compensations, and
// starts two sagas: one that completes, and one whose third step (assign_bed) fails
// so that the sidecar compensates it: unassign_bed, cancel_admission, release_bed_hold.
// It prints what ran and how each saga ended, and exits 1 if either ended otherwise.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf('--' + name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const addr = arg('addr', '127.0.0.1:50051');
const tenantId = arg('tenant', '6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a');
const protoDir = process.env.EVENTGW_PROTO_DIR || path.resolve(__dirname, '../../proto');

const def = protoLoader.loadSync('eventgw/v1/saga.proto', {
  includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const { SagaService } = grpc.loadPackageDefinition(def).eventgw.v1;
const client = new SagaService(addr, grpc.credentials.createInsecure());
const call = (method, req) => new Promise((resolve, reject) =>
  client[method](req, (err, resp) => (err ? reject(err) : resolve(resp))));

// The guide's WorkflowDefinition.
const workflow = {
  workflow_id: 'patient-admission',
  name: 'Patient Admission Workflow',
  description: 'Complete patient admission process',
  enable_compensation: true,
  steps: [
    { step_id: 'check-bed-availability', name: 'Check Bed Availability', action: 'check_beds',
      compensation_action: 'release_bed_hold', timeout_seconds: 30 },
    { step_id: 'create-admission', name: 'Create Admission Record', action: 'create_admission',
      compensation_action: 'cancel_admission' },
    { step_id: 'assign-bed', name: 'Assign Bed to Patient', action: 'assign_bed',
      compensation_action: 'unassign_bed', retry: { max_attempts: 2, initial_backoff_ms: 200 } },
    { step_id: 'notify-ward', name: 'Notify Ward Staff', action: 'notify_ward_staff' },
  ],
};

// Actions get (context, input) and return the step's output; compensations get
// (context, the step's output). Throwing fails the task (retried per the step's policy;
// a NonRetryable error fails the step at once).
class NonRetryable extends Error {}
const actions = {
  async check_beds(context, input) {
    return { bed_id: `bed-${input.ward_id}-7` };
  },
  async create_admission(context) {
    return { admission_id: `adm-${context.patient_id}-${context.bed_id}` };
  },
  async assign_bed(context) {
    if (context.ward_id === 'ward-full') throw new NonRetryable('the bed was given to someone else');
    return { assignment_id: `asg-${context.bed_id}` };
  },
  async notify_ward_staff(context) {
    return { notified: context.ward_id };
  },
};
const compensations = {
  async release_bed_hold(context, output) { return { released: output.bed_id }; },
  async cancel_admission(context, output) { return { cancelled: output.admission_id }; },
  async unassign_bed(context, output) { return { unassigned: output.assignment_id || null }; },
};

const ran = {}; // saga id -> ["check_beds", ...]

function runWorker() {
  const stream = client.PollTasks({
    worker_id: `node-${process.pid}`, actions: Object.keys(actions),
    compensations: Object.keys(compensations), max_in_flight: 8, payload_as_json: true,
  });
  stream.on('data', (resp) => {
    for (const task of resp.tasks) handle(task);
  });
  stream.on('error', (err) => {
    if (err.code !== grpc.status.CANCELLED) console.error('PollTasks:', err.message);
  });
  return stream;
}

async function handle(task) {
  const fn = task.kind === 'TASK_KIND_COMPENSATION' ? compensations[task.action] : actions[task.action];
  const context = JSON.parse(task.context_json.toString() || '{}');
  const input = JSON.parse(task.input_json.toString() || '{}');
  (ran[task.saga_id] = ran[task.saga_id] || []).push(task.action);
  try {
    const output = await fn(context, input);
    await call('CompleteTask', { task_id: task.task_id, output_json: Buffer.from(JSON.stringify(output || {})) });
  } catch (err) {
    await call('FailTask', {
      task_id: task.task_id, error_type: err.constructor.name, error_message: err.message,
      non_retryable: err instanceof NonRetryable,
    }).catch((e) => console.error('FailTask:', e.message));
  }
}

async function waitEnded(sagaId) {
  for (;;) {
    const { saga } = await call('GetSaga', { tenant_id: tenantId, saga_id: sagaId });
    if (!['SAGA_STATE_RUNNING', 'SAGA_STATE_COMPENSATING'].includes(saga.saga_state)) return saga;
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function admit(patientId, wardId) {
  const { saga } = await call('StartSaga', {
    workflow_id: 'patient-admission', tenant_id: tenantId,
    context_json: Buffer.from(JSON.stringify({ patient_id: patientId, ward_id: wardId })),
  });
  const done = await waitEnded(saga.saga_id);
  console.log(`saga ${done.saga_id} (${patientId}, ${wardId}): ${done.saga_state}`);
  console.log(`  ran: ${ran[done.saga_id].join(' -> ')}`);
  for (const st of done.steps) console.log(`  ${st.step_id.padEnd(24)} ${st.status}`);
  if (done.error_message) console.log(`  reason: ${done.error_type}: ${done.error_message}`);
  return done;
}

async function main() {
  const { version, created } = await call('RegisterWorkflow', { workflow });
  console.log(`workflow patient-admission version ${version}${created ? ' registered' : ' (unchanged)'}`);
  const stream = runWorker();
  try {
    const ok = await admit('p-123', 'ward-4');
    const bad = await admit('p-456', 'ward-full');
    const expected = ['check_beds', 'create_admission', 'assign_bed', 'unassign_bed', 'cancel_admission', 'release_bed_hold'];
    if (ok.saga_state !== 'SAGA_STATE_COMPLETED' || bad.saga_state !== 'SAGA_STATE_COMPENSATED' ||
        ran[bad.saga_id].join() !== expected.join()) {
      console.error('unexpected outcome');
      process.exitCode = 1;
    }
  } finally {
    stream.cancel();
    client.close();
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
