/** A request's JSON body, read up to a size limit (an oversized or malformed body is an HttpError, never a crash). */
import type { IncomingMessage } from "node:http";
import { formatBytes } from "../util/bytes.js";
import { HttpError } from "./HttpError.js";

export async function readJsonBody(req: IncomingMessage, limitBytes: number): Promise<unknown> {
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > limitBytes) throw tooLarge(limitBytes);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      // Stop reading at the limit: the rest is not buffered (the connection is closed after the answer).
      if (size > limitBytes) throw tooLarge(limitBytes);
      chunks.push(chunk);
    }
  } catch (err) {
    if (err instanceof HttpError) throw err;
    // The client went away while sending: a client error (there is no one left to answer).
    throw new HttpError(400, `the request body could not be read: ${(err as Error).message}`);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text.trim() === "") throw new HttpError(400, "the request body is empty; send a JSON object");
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `the request body is not valid JSON: ${(err as Error).message}`);
  }
}

function tooLarge(limitBytes: number): HttpError {
  return new HttpError(413, `the request body is larger than the server's limit of ${formatBytes(limitBytes)}`, "invalid_request_error", null, "request_too_large");
}
