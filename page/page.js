// The page of `python rnn_mnist.py serve`: draw a digit, send it to /api/read, and show
// how the network read it, row by row (or step by step, for a model that reads its pixels in
// another order: /api/read answers for up to 28 of its steps). No library and no build step:
// the canvas API draws every picture.
"use strict";

const SIZE = 28; // the image's rows, and its columns
const CLASSES = 10;
const READ_DELAY_MS = 150; // while drawing, ask again once the pen rests this long
const ROW_STEP_MS = 45; // the reading plays at this pace per row (28 shown steps)
const STROKE_WIDTH = 20; // on the 280-pixel pad: MNIST's stroke once scaled to 20 pixels
const SURE = 0.9; // "sure" in the story: at least this probability from that row on
const LEANING = 0.5; // "leaning to" in the story

// colour scales, as stops from 0 to 1: the same as TensorBoard's pictures of a run
const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
const MAGMA = ["#000004", "#3b0f70", "#8c2981", "#de4968", "#fe9f6d", "#fcfdbf"];
const RED_BLUE = ["#2166ac", "#67a9cf", "#f7f7f7", "#ef8a62", "#b2182b"]; // -1 blue .. +1 red

const $ = (id) => document.getElementById(id);

const page = {
  about: null, // /api/model's answer: the model, and the order it reads the pixels in
  reading: null, // the last answer of /api/read
  row: SIZE - 1, // the row (the step shown) chosen: the readout after it, the line under it
  requests: 0, // numbers the requests, so an answer to an older drawing is dropped
  timer: null, // the pending read while drawing
  player: null, // the running animation of the reading
  strokeEnd: null, // when the last stroke ended, for the timing below
};
// for tests and the curious: milliseconds from the end of a stroke to its answer drawn
window.rnnMnist = { timings: [], page };

// ---------------------------------------------------------------------------
// Colours

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function colourScale(stops) {
  const rgb = stops.map(hexToRgb);
  return (t) => {
    const x = Math.min(Math.max(t, 0), 1) * (rgb.length - 1);
    const i = Math.min(Math.floor(x), rgb.length - 2);
    const f = x - i;
    const mix = rgb[i].map((v, k) => Math.round(v + (rgb[i + 1][k] - v) * f));
    return `rgb(${mix[0]},${mix[1]},${mix[2]})`;
  };
}

const viridis = colourScale(VIRIDIS);
const magma = colourScale(MAGMA);
const redBlue = colourScale(RED_BLUE);

// ---------------------------------------------------------------------------
// Drawing on the pad, with a mouse, a finger or a pen (pointer events cover all three)

const pad = $("pad");
const pen = pad.getContext("2d");
let lastPoint = null;

function clearPad() {
  pen.fillStyle = "white";
  pen.fillRect(0, 0, pad.width, pad.height);
}

function pointOf(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

function strokeTo(point) {
  pen.strokeStyle = "black";
  pen.lineWidth = STROKE_WIDTH;
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.beginPath();
  pen.moveTo(...(lastPoint || point));
  pen.lineTo(...point);
  pen.stroke();
  lastPoint = point;
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  stopPlaying();
  lastPoint = null;
  strokeTo(pointOf(event));
  readSoon();
});

pad.addEventListener("pointermove", (event) => {
  if (lastPoint === null) return;
  for (const each of event.getCoalescedEvents ? event.getCoalescedEvents() : [event]) {
    strokeTo(pointOf(each));
  }
  readSoon();
});

function endStroke() {
  if (lastPoint === null) return;
  lastPoint = null;
  page.strokeEnd = performance.now();
  readPad(true);
}

pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  clearPad();
  page.requests += 1; // an answer still on its way is for a drawing that is gone
  showNothing("");
});

// a picture file, chosen or dropped: sent as it is, so the server reads it as `predict` would
$("file").addEventListener("change", (event) => {
  if (event.target.files.length) usePicture(event.target.files[0]);
  event.target.value = "";
});
pad.addEventListener("dragover", (event) => {
  event.preventDefault();
  pad.classList.add("dropping");
});
pad.addEventListener("dragleave", () => pad.classList.remove("dropping"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("dropping");
  if (event.dataTransfer.files.length) usePicture(event.dataTransfer.files[0]);
});

async function usePicture(file) {
  clearPad();
  try { // show it on the pad, fitted; a picture the browser cannot draw is still sent
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale, h = bitmap.height * scale;
    pen.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch (error) { /* the server's answer says what is wrong with it */ }
  page.strokeEnd = null;
  send(file, true);
}

// ---------------------------------------------------------------------------
// Asking the server

function readSoon() {
  clearTimeout(page.timer);
  page.timer = setTimeout(() => readPad(false), READ_DELAY_MS);
}

// The pad as PNG bytes. toDataURL rather than toBlob: Chrome encodes a toBlob in idle
// time, which after pointer events came a full second late (measured headless).
function padAsPng() {
  const base64 = pad.toDataURL("image/png").split(",")[1];
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function readPad(play) {
  clearTimeout(page.timer);
  send(padAsPng(), play);
}

async function send(body, play) {
  const request = ++page.requests;
  const strokeEnd = play ? page.strokeEnd : null;
  let response, answer;
  try {
    response = await fetch("/api/read", { method: "POST", body });
    answer = await response.json();
  } catch (error) {
    if (request === page.requests) showNothing(`the server did not answer (${error.message})`);
    return;
  }
  if (request !== page.requests) return; // a newer drawing has been sent since
  if (!response.ok) {
    showNothing(answer.error);
    return;
  }
  show(answer, play);
  if (strokeEnd !== null) window.rnnMnist.timings.push(performance.now() - strokeEnd);
}

// ---------------------------------------------------------------------------
// Showing a reading

function show(reading, play) {
  page.reading = reading;
  $("status").textContent = "";
  $("answer").textContent = reading.digit;
  const ranked = reading.probabilities.map((p, digit) => [p, digit]).sort((a, b) => b[0] - a[0]);
  $("top3").innerHTML = "";
  for (const [p, digit] of ranked.slice(0, 3)) {
    const item = document.createElement("li");
    item.textContent = `${digit}   ${percent(p)}`;
    $("top3").append(item);
  }
  $("story").textContent = story(reading.readout, reading.steps);
  makeStatePictures(reading);
  document.body.dataset.reading = "shown";
  $("row").max = reading.readout.length - 1;
  if (play) playReading();
  else showRow(reading.readout.length - 1);
}

function showNothing(message) {
  stopPlaying();
  page.reading = null;
  $("status").textContent = message;
  $("answer").textContent = "–";
  $("top3").innerHTML = "";
  $("story").textContent = "";
  $("state").innerHTML = "";
  delete document.body.dataset.reading;
  for (const id of ["seen", "readout", "bars"]) {
    const canvas = $(id);
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
}

function percent(p) {
  if (p < 0.001) return "<0.1%";
  return p === Math.round(p * 100) / 100 ? `${Math.round(100 * p)}%` : `${(100 * p).toFixed(1)}%`;
}

// Does the model read row by row, a row a step (not yet known: it does, as most do)?
function readsRows() {
  return page.about === null || (page.about.order === "rows" && page.about.pixels_per_step === SIZE);
}

// the place the j-th readout comes after: a row, or a step of those shown
function place(j, steps) {
  return readsRows() ? `row ${j}` : `step ${steps[j]}`;
}

// Where the network made up its mind, in words, from the probabilities after each row.
function story(readout, steps) {
  const leaders = readout.map((p) => {
    const digit = p.indexOf(Math.max(...p));
    return { digit, p: p[digit] };
  });
  const final = leaders[leaders.length - 1];
  const turns = [];
  leaders.forEach((leader, row) => {
    const before = turns.length ? turns[turns.length - 1].digit : null;
    if (leader.p >= LEANING && leader.digit !== before) turns.push({ digit: leader.digit, row });
  });
  let sureFrom = null;
  for (let row = leaders.length - 1; row >= 0; row--) {
    if (leaders[row].digit !== final.digit || leaders[row].p < SURE) break;
    sureFrom = row;
  }
  const leaning = turns.map((t) => `${t.digit} after ${place(t.row, steps)}`).join(", then ");
  const last = readsRows() ? "row" : "step";
  const sure = sureFrom === null
    ? `It never became ${percent(SURE)} sure: ${final.digit} at ${percent(final.p)} after the last ${last}.`
    : `Sure it is a ${final.digit} (${percent(SURE)} or more) from ${place(sureFrom, steps)} on.`;
  const mind = turns.length > 1 ? ` It changed its mind ${turns.length - 1} time${turns.length > 2 ? "s" : ""}.` : "";
  return (turns.length ? `Leaning to ${leaning}.` : "") + mind + " " + sure;
}

// ---------------------------------------------------------------------------
// The reading over the rows, animated once per drawing and scrubbable

$("row").addEventListener("input", (event) => {
  stopPlaying();
  showRow(Number(event.target.value));
});
$("play").addEventListener("click", () => page.reading && playReading());

function playReading() {
  stopPlaying();
  const shown = page.reading.readout.length;
  let row = 0;
  showRow(row);
  page.player = setInterval(() => {
    row += 1;
    showRow(row);
    if (row === shown - 1) stopPlaying();
  }, ROW_STEP_MS * SIZE / shown); // as long in all, however many steps are shown
}

function stopPlaying() {
  clearInterval(page.player);
  page.player = null;
}

function showRow(row) {
  page.row = row;
  $("row").value = row;
  $("row-label").textContent = row;
  if (!page.reading) return;
  if (!readsRows()) $("row-label").textContent = `${page.reading.steps[row]} of ${page.about.steps}`;
  drawSeen(page.reading.seen, row);
  drawReadout(page.reading.readout, row);
  drawBars(page.reading.readout[row]);
  for (const picture of $("state").querySelectorAll("canvas")) drawState(picture, row);
}

// which of the 784 pixels (row * 28 + column) the model has read by the step shown at `row`
function readSoFar(row) {
  const read = new Uint8Array(SIZE * SIZE);
  if (readsRows()) {
    read.fill(1, 0, (row + 1) * SIZE);
    return read;
  }
  const order = page.about.pixel_order;
  const count = page.reading.steps[row] * page.about.pixels_per_step;
  for (let i = 0; i < count; i++) read[order[i]] = 1;
  return read;
}

// the 28x28 image the model saw, the pixels still unread dimmed (for a model that reads
// row by row, a line under the row just read)
function drawSeen(seen, row) {
  const canvas = $("seen"), g = canvas.getContext("2d");
  const cell = canvas.width / SIZE;
  const read = readSoFar(row), blue = !readsRows(); // scattered unread pixels: blank ones blue
  seen.forEach((pixels, r) => pixels.forEach((v, c) => {
    const shade = read[r * SIZE + c] ? v : Math.round(v * 0.35);
    g.fillStyle = blue && !read[r * SIZE + c] && !v ? "rgb(28,34,72)" : `rgb(${shade},${shade},${shade})`;
    g.fillRect(c * cell, r * cell, cell, cell);
  }));
  if (!readsRows()) return;
  g.fillStyle = "rgba(217,72,15,0.9)";
  g.fillRect(0, (row + 1) * cell - 1, canvas.width, 2);
}

const READOUT_TOP = 16; // room for the digits above the columns

// rows down, digits across: the chance of each digit after each row
function drawReadout(readout, row) {
  const canvas = $("readout"), g = canvas.getContext("2d");
  const w = canvas.width / CLASSES, h = (canvas.height - READOUT_TOP) / readout.length;
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.fillStyle = "#1d2330";
  g.font = "12px system-ui, sans-serif";
  g.textAlign = "center";
  for (let digit = 0; digit < CLASSES; digit++) g.fillText(digit, (digit + 0.5) * w, 12);
  readout.forEach((p, r) => p.forEach((v, digit) => {
    g.fillStyle = viridis(v);
    g.fillRect(digit * w, READOUT_TOP + r * h, w, h);
  }));
  g.strokeStyle = "rgba(217,72,15,0.95)";
  g.lineWidth = 2;
  g.strokeRect(1, READOUT_TOP + row * h, canvas.width - 2, h);
}

// the ten probabilities after the chosen row, as bars
function drawBars(p) {
  const canvas = $("bars"), g = canvas.getContext("2d");
  const h = canvas.height / CLASSES, left = 16, right = 50;
  const best = p.indexOf(Math.max(...p));
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.font = "12px system-ui, sans-serif";
  g.textBaseline = "middle";
  p.forEach((v, digit) => {
    const y = digit * h;
    g.fillStyle = "#1d2330";
    g.textAlign = "left";
    g.fillText(digit, 2, y + h / 2);
    g.fillStyle = digit === best ? "#d9480f" : "#8a93a6";
    g.fillRect(left, y + 4, Math.max(1, v * (canvas.width - left - right)), h - 8);
    g.fillStyle = "#1d2330";
    g.textAlign = "right";
    g.fillText(percent(v), canvas.width - 2, y + h / 2);
  });
}

const STATE_CELL = { w: 6, h: 6 }; // pixels per unit and per row in the state pictures
const STATE_TOP = 16; // room for the digits above the groups of units

// one picture per gate and for the state: rows down, the shown units across
function makeStatePictures(reading) {
  const box = $("state");
  box.innerHTML = "";
  for (const [name, values] of Object.entries(reading.state)) {
    const figure = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = values[0].length * STATE_CELL.w;
    canvas.height = STATE_TOP + SIZE * STATE_CELL.h; // as tall for any number of steps shown
    canvas.dataset.name = name;
    canvas.setAttribute("aria-label", `${name} of each unit shown, after each row`);
    const caption = document.createElement("figcaption");
    caption.textContent = name;
    figure.append(canvas, caption);
    box.append(figure);
  }
}

function drawState(canvas, row) {
  const { state, unit_digits: digits } = page.reading;
  const values = state[canvas.dataset.name];
  const colour = canvas.dataset.name.includes("gate") ? magma : (v) => redBlue((v + 1) / 2);
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.fillStyle = "#1d2330";
  g.font = "11px system-ui, sans-serif";
  g.textAlign = "left";
  digits.forEach((digit, k) => {
    if (k === 0 || digits[k - 1] !== digit) g.fillText(digit, k * STATE_CELL.w + 1, 12);
  });
  const h = SIZE * STATE_CELL.h / values.length;
  values.forEach((units, r) => units.forEach((v, k) => {
    g.fillStyle = colour(v);
    g.fillRect(k * STATE_CELL.w, STATE_TOP + r * h, STATE_CELL.w, h);
  }));
  g.fillStyle = "rgba(217,72,15,0.95)";
  g.fillRect(0, STATE_TOP + (row + 1) * h - 1, canvas.width, 2);
}

// ---------------------------------------------------------------------------
// Start

clearPad();
fetch("/api/model").then((response) => response.json()).then((about) => {
  const tested = about.test_accuracy === null ? "not tested yet"
    : `test accuracy ${(100 * about.test_accuracy).toFixed(2)}%`;
  $("model").textContent = `model: ${about.model} (run ${about.run}, ${about.cell}, ${tested})`;
  page.about = about;
  if (!readsRows()) tellTheOrder(about);
}).catch(() => { $("model").textContent = "the server did not answer"; });

// A model that reads its pixels in another order: the page says so, and speaks of steps
function tellTheOrder(about) {
  const shown = Math.min(about.steps, SIZE);
  $("reads").textContent = `This model reads the 784 pixels ${about.reads}. The pictures show its `
    + `reading after ${shown === about.steps ? "each step" : `${shown} of its steps, evenly spaced`}; `
    + "“What it sees” shows the pixels it has read by then, the others dimmed (blank ones dark blue).";
  $("reads").hidden = false;
  for (const heading of document.querySelectorAll("h1, h2")) {
    heading.textContent = heading.textContent.replace("row by row", "step by step")
      .replace("one row at a time", "step by step");
  }
  $("row-unit").textContent = "step";
  $("reading-note").textContent = "The chance of each digit after the network has read the pixels "
    + "of the steps down to the line: the first step at the top. Drag the slider to any step.";
  $("state-note").textContent = "Each column is one unit of the LSTM: for every digit, the units "
    + "whose output votes most for it, grouped under that digit. Each row of colour is the unit "
    + "after a step shown, the first at the top. Gates run from closed (dark) to open (light); "
    + "the state, squashed by tanh as the cell squashes it, from −1 (blue) to +1 (red).";
}
