/**
 * Who owns a record once a device form is made from it (store/RecordFile.ts counts owners): the
 * caller hands its reference to prepareOwned(); when the form is the record itself (CPU kernels),
 * the reference passes to the form, else the record is released at once. freeResident() frees a
 * form and, for a record form, its memory.
 */
import { releaseRecord } from "../store/RecordFile.js";

/** What the helpers need of a form: ResidentForm and ExpertKernel both fit. */
export interface RecordForm {
  prepare(record: Uint8Array, layer: number): unknown;
  free(resident: unknown): void;
}

/** `layer`: whose record it is (the form of a model whose layers differ in encoding depends on it). */
export async function prepareOwned(form: RecordForm, record: Uint8Array, layer: number): Promise<NonNullable<unknown>> {
  let resident: NonNullable<unknown>;
  try {
    resident = (await form.prepare(record, layer)) as NonNullable<unknown>;
  } catch (err) {
    releaseRecord(record);
    throw err;
  }
  if (resident !== record) releaseRecord(record);
  return resident;
}

export function freeResident(form: RecordForm, resident: unknown): void {
  form.free(resident);
  if (resident instanceof Uint8Array) releaseRecord(resident);
}
