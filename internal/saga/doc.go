// Package saga will hold the workflow engine behind SagaService (the guide's "Workflow
// Engine & Saga Pattern": steps run by workers through leased tasks, compensation in
// reverse order, every state change a PostgreSQL transaction). It is empty until that
// issue lands; until then SagaService answers Unimplemented.
package saga
