/** An HTTP error answered with an OpenAI-style error object: {"error": {message, type, param, code}}. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null
  ) {
    super(message);
    this.name = "HttpError";
  }

  /** The response body. */
  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400 for a request field: names the field in `param`. */
export function badField(param: string, message: string): HttpError {
  return new HttpError(400, message, "invalid_request_error", param);
}
