/** Hugging Face repository ids ("org/name", optionally "org/name@revision") as users write them. */
import { InvalidOptionError } from "../errors.js";

export interface RepoRef {
  repoId: string;
  /** The revision after "@", if one was written. */
  revision?: string;
}

// The hub's own rule, in short: letters, digits, "-", "_", "."; no "--" or ".." (they would make
// cache folder names ambiguous), not starting or ending with "-" or ".".
const SEGMENT = "[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?";
const ORG_NAME = new RegExp(`^${SEGMENT}/${SEGMENT}$`);
const NAME_ONLY = new RegExp(`^${SEGMENT}$`);

function validSegments(repoId: string): boolean {
  return !repoId.includes("--") && !repoId.includes("..");
}

/** Whether `text` reads as "org/name" or "org/name@revision" (what `import` pulls instead of reading a folder). */
export function looksLikeRepoId(text: string): boolean {
  const at = text.indexOf("@");
  const id = at < 0 ? text : text.slice(0, at);
  const revision = at < 0 ? undefined : text.slice(at + 1);
  return ORG_NAME.test(id) && validSegments(id) && (revision === undefined || validRevision(revision));
}

function validRevision(revision: string): boolean {
  // Branches, tags and commits; "refs/pr/1" style names too. Never a path that climbs out of refs/.
  return revision.length > 0 && revision.length <= 256 && !/[\s\\:]/.test(revision) && !revision.split("/").some((s) => s === "" || s === "." || s === "..");
}

/** Parses "org/name[@revision]" (a legacy id without an org is accepted too); throws INVALID_OPTION. */
export function parseRepoRef(text: string, revision?: string): RepoRef {
  const at = text.indexOf("@");
  const repoId = at < 0 ? text : text.slice(0, at);
  const fromText = at < 0 ? undefined : text.slice(at + 1);
  if (!(ORG_NAME.test(repoId) || NAME_ONLY.test(repoId)) || !validSegments(repoId)) {
    throw new InvalidOptionError(`"${repoId}" is not a Hugging Face repository id; write it as org/name (for example mistralai/Mixtral-8x7B-v0.1)`);
  }
  if (fromText !== undefined && revision !== undefined && fromText !== revision) {
    throw new InvalidOptionError(`two revisions given: "${fromText}" in ${text} and --revision ${revision}`);
  }
  const rev = revision ?? fromText;
  if (rev !== undefined && !validRevision(rev)) throw new InvalidOptionError(`"${rev}" is not a valid revision (a branch, tag or commit)`);
  return rev === undefined ? { repoId } : { repoId, revision: rev };
}

/** A full commit hash: such a revision names its snapshot directly. */
export function isCommitHash(revision: string): boolean {
  return /^[0-9a-f]{40}$/.test(revision);
}
