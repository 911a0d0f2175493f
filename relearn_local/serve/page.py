"""The page served at ``GET /``: a question box and the answers, side by side with ``--compare``.

The page is kept as Python strings so it ships inside the package without
package-data settings, and it loads nothing from other hosts. It reads the
model names and limits from ``/health`` and renders every answer with
``textContent``, so model output can never inject markup.
"""

from __future__ import annotations

_STYLE = """
:root { color-scheme: light dark; --accent: #2f6feb; --muted: #6b7280; --border: #d0d7de; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 72rem;
       padding: 1.5rem; }
header h1 { font-size: 1.4rem; margin: 0; }
header p { margin: .25rem 0 1rem; color: var(--muted); }
form { display: flex; flex-direction: column; gap: .5rem; }
textarea { font: inherit; width: 100%; min-height: 5rem; padding: .6rem; border: 1px solid var(--border);
           border-radius: 6px; resize: vertical; }
.actions { display: flex; align-items: center; gap: 1rem; }
button { font: inherit; padding: .45rem 1.2rem; border: 0; border-radius: 6px; background: var(--accent);
         color: white; cursor: pointer; }
button:disabled { opacity: .6; cursor: progress; }
#status, .hint { color: var(--muted); font-size: .9rem; }
.answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr)); gap: 1rem;
           margin-top: 1.25rem; }
.panel { border: 1px solid var(--border); border-radius: 8px; padding: .75rem 1rem; }
.panel h2 { font-size: 1rem; margin: 0 0 .5rem; }
.panel h2 small { color: var(--muted); font-weight: normal; margin-left: .4rem; }
.answer { white-space: pre-wrap; overflow-wrap: anywhere; min-height: 2rem; }
.answer:empty::before { content: "(empty answer)"; color: var(--muted); }
.answer[data-state="idle"]:empty::before { content: "No question asked yet."; }
.answer[data-state="loading"] { color: var(--muted); font-style: italic; }
.answer[data-state="error"] { color: #cf222e; }
"""

_SCRIPT = """
"use strict";
const info = { compare: null };
const $ = (id) => document.getElementById(id);

async function loadInfo() {
  try {
    const reply = await fetch("/health");
    const health = await reply.json();
    $("model-name").textContent = health.model;
    $("unlearned-model").textContent = health.model;
    $("question").maxLength = health.limits.max_question_chars;
    $("limit-hint").textContent = "Up to " + health.limits.max_question_chars + " characters; Ctrl+Enter asks.";
    if (health.compare) {
      info.compare = health.compare.model;
      $("original-model").textContent = health.compare.model;
      $("original-panel").hidden = false;
    }
    document.body.dataset.ready = "true";
  } catch (error) {
    $("status").textContent = "Could not reach the server: " + error.message;
  }
}

async function askModel(path, question, target) {
  target.dataset.state = "loading";
  target.textContent = "Generating\\u2026";
  try {
    const reply = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ question: question }),
    });
    const body = await reply.json().catch(() => ({}));
    if (!reply.ok) {
      target.dataset.state = "error";
      target.textContent = body.detail || ("The server replied with HTTP " + reply.status + ".");
      return;
    }
    target.dataset.state = "done";
    target.textContent = body.response;
  } catch (error) {
    target.dataset.state = "error";
    target.textContent = "Could not reach the server: " + error.message;
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) {
    $("status").textContent = "Type a question first.";
    return;
  }
  $("ask").disabled = true;
  $("status").textContent = "Generating\\u2026";
  const started = performance.now();
  const pending = [askModel("/unlearn/", question, $("answer-unlearned"))];
  if (info.compare) {
    pending.push(askModel("/original/", question, $("answer-original")));
  }
  await Promise.all(pending);
  const seconds = (performance.now() - started) / 1000;
  $("status").textContent = "Answered in " + seconds.toFixed(1) + " s.";
  $("ask").disabled = false;
}

$("ask-form").addEventListener("submit", ask);
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    $("ask-form").requestSubmit();
  }
});
loadInfo();
"""

_BODY = """
<header>
  <h1>relearn-local</h1>
  <p>Serving <strong id="model-name">&hellip;</strong></p>
</header>
<main>
  <form id="ask-form">
    <label for="question">Question</label>
    <textarea id="question" name="question" placeholder="Ask the model something" required></textarea>
    <div class="actions">
      <button id="ask" type="submit">Ask</button>
      <span id="status" role="status" aria-live="polite"></span>
    </div>
    <span id="limit-hint" class="hint"></span>
  </form>
  <div class="answers">
    <section id="unlearned-panel" class="panel">
      <h2>Unlearned model<small id="unlearned-model"></small></h2>
      <div id="answer-unlearned" class="answer" data-state="idle" aria-live="polite"></div>
    </section>
    <section id="original-panel" class="panel" hidden>
      <h2>Original model<small id="original-model"></small></h2>
      <div id="answer-original" class="answer" data-state="idle" aria-live="polite"></div>
    </section>
  </div>
</main>
"""

PAGE_HTML = (
    "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>relearn-local serve</title>\n"
    f"<style>{_STYLE}</style>\n</head>\n<body>{_BODY}<script>{_SCRIPT}</script>\n</body>\n</html>\n"
)
