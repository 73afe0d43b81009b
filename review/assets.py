"""Inline CSS and JavaScript of the review form (no external files, CDN or server: the form works from file://).

The script reads its configuration from ``<script id="review-config" type="application/json">``
(``{"form_id", "ids", "levels", "answers_format", "version", "csv_columns"}``), and saves the answers with a
client-side ``Blob`` download in one of two formats that :mod:`review.answers` reads:

JSON::

    {"format": "her2-review-answers", "version": 1, "form_id": "<12 hex>", "reviewer": "<name>",
     "saved": "<ISO 8601 UTC>", "answers": {"img01": "2+", "img02": "0", ...}}

CSV (UTF-8, RFC 4180 quoting, header first)::

    form_id,reviewer,image_id,level
    <form_id>,<name>,img01,2+

Only scored images are listed; the scorer refuses files with unscored images. Progress is also kept in the browser's
``localStorage`` (per form id) when the browser allows it, and a saved JSON file can be loaded back to continue.
``window.her2Review`` exposes ``collect()``, ``buildJSON()``, ``buildCSV()`` and ``restore(obj)`` for automation.
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }
header { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #ccc; padding: .6em 1em; }
header h1 { font-size: 1.2em; margin: 0 0 .3em 0; }
header .bar { display: flex; flex-wrap: wrap; gap: .6em; align-items: center; }
header input[type=text] { font-size: 1em; padding: .2em .4em; min-width: 14em; }
button, .filebtn { font-size: 1em; padding: .3em .8em; cursor: pointer; }
#progress { font-weight: bold; }
.instructions { margin: 1em; max-width: 60em; }
main { display: flex; flex-wrap: wrap; gap: 1em; padding: 1em; }
figure { background: #fff; border: 2px solid #ccc; margin: 0; padding: .5em; width: 520px; }
figure.unscored { border-color: #e0a000; }
figure img { width: 512px; height: auto; display: block; cursor: zoom-in; image-rendering: auto; }
figure.zoom { width: auto; flex-basis: 100%; }
figure.zoom img { width: auto; max-width: none; cursor: zoom-out; }
figcaption { font-weight: bold; margin: .3em 0; }
fieldset { border: 0; padding: 0; margin: .3em 0 0 0; display: flex; gap: 1em; }
fieldset label { font-size: 1.1em; cursor: pointer; }
"""

JS = r"""
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("review-config").textContent);
  var storeKey = "her2-review:" + cfg.form_id;

  function el(id) { return document.getElementById(id); }
  function reviewer() { return el("reviewer").value.trim(); }

  function collect() {
    var answers = {};
    cfg.ids.forEach(function (id) {
      var radios = document.getElementsByName(id);
      for (var i = 0; i < radios.length; i++) {
        if (radios[i].checked) { answers[id] = radios[i].value; }
      }
    });
    return answers;
  }

  function buildJSON() {
    var obj = {
      format: cfg.answers_format, version: cfg.version, form_id: cfg.form_id,
      reviewer: reviewer(), saved: new Date().toISOString(), answers: collect()
    };
    return JSON.stringify(obj, null, 1);
  }

  function csvField(s) {
    s = String(s);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function buildCSV() {
    var answers = collect();
    var lines = [cfg.csv_columns.join(",")];
    cfg.ids.forEach(function (id) {
      if (answers.hasOwnProperty(id)) {
        lines.push([cfg.form_id, reviewer(), id, answers[id]].map(csvField).join(","));
      }
    });
    return lines.join("\r\n") + "\r\n";
  }

  function fileName(ext) {
    var who = reviewer().replace(/[^A-Za-z0-9_-]+/g, "_").replace(/^_+|_+$/g, "") || "reviewer";
    return "her2_review_" + cfg.form_id + "_" + who + "." + ext;
  }

  function download(text, mime, ext) {
    var blob = new Blob([text], { type: mime });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = fileName(ext);
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
  }

  function save(kind) {
    if (!reviewer()) { alert("Please enter your name first."); el("reviewer").focus(); return; }
    var missing = cfg.ids.length - Object.keys(collect()).length;
    if (missing > 0 && !confirm(missing + " image(s) are not scored yet. Only a complete file can be scored. " +
                                "Save this partial file anyway (you can load it again to continue)?")) { return; }
    if (kind === "csv") { download(buildCSV(), "text/csv;charset=utf-8", "csv"); }
    else { download(buildJSON(), "application/json", "json"); }
  }

  function update() {
    var answers = collect();
    var n = Object.keys(answers).length;
    el("progress").textContent = n + " / " + cfg.ids.length + " scored";
    cfg.ids.forEach(function (id) {
      var fig = el("fig-" + id);
      if (fig) { fig.className = fig.className.replace(/\bunscored\b/g, "").trim() + (answers[id] ? "" : " unscored"); }
    });
    try { localStorage.setItem(storeKey, JSON.stringify({ reviewer: reviewer(), answers: answers })); }
    catch (e) { /* storage unavailable (private mode, file:// policy): saving to a file still works */ }
  }

  function restore(obj) {
    if (!obj || typeof obj !== "object") { return 0; }
    if (typeof obj.reviewer === "string" && obj.reviewer) { el("reviewer").value = obj.reviewer; }
    var n = 0, answers = obj.answers || {};
    cfg.ids.forEach(function (id) {
      if (cfg.levels.indexOf(answers[id]) < 0) { return; }
      var radios = document.getElementsByName(id);
      for (var i = 0; i < radios.length; i++) {
        if (radios[i].value === answers[id]) { radios[i].checked = true; n++; }
      }
    });
    update();
    return n;
  }

  function loadFile(ev) {
    var f = ev.target.files[0];
    if (!f) { return; }
    var reader = new FileReader();
    reader.onload = function () {
      var obj;
      try { obj = JSON.parse(reader.result); } catch (e) { alert("Not a JSON answer file: " + f.name); return; }
      if (obj.form_id !== cfg.form_id) { alert(f.name + " belongs to another form (" + obj.form_id + ")."); return; }
      alert(restore(obj) + " answer(s) loaded from " + f.name);
    };
    reader.readAsText(f);
    ev.target.value = "";
  }

  document.addEventListener("change", function (ev) {
    if (ev.target && ev.target.type === "radio") { update(); }
  });
  el("reviewer").addEventListener("input", update);
  el("save-json").addEventListener("click", function () { save("json"); });
  el("save-csv").addEventListener("click", function () { save("csv"); });
  el("load").addEventListener("change", loadFile);
  var imgs = document.querySelectorAll("figure img");
  for (var i = 0; i < imgs.length; i++) {
    imgs[i].addEventListener("click", function (ev) { ev.target.parentNode.classList.toggle("zoom"); });
  }
  try { var kept = localStorage.getItem(storeKey); if (kept) { restore(JSON.parse(kept)); } }
  catch (e) { /* no stored progress */ }
  update();
  window.her2Review = { collect: collect, buildJSON: buildJSON, buildCSV: buildCSV, restore: restore };
})();
"""
